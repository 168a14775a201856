"""The local executor: a worker process claims queued jobs and runs the trainer for each."""
