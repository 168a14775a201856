"""The `llm-train-api` command: server commands and client commands (see main)."""
