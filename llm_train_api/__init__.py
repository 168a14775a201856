"""llm_train_api: a self-hosted service that queues and runs LLM training jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]


def create_app(test_config: Any = None) -> Flask:
    # Imported lazily so that `llm_train_api.training` (run on GPU nodes) never pays for Flask.
    from llm_train_api.api.app import create_app as factory

    return factory(test_config)
