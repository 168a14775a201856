"""The client side of `llm-train-api`: commands that talk to a running service over HTTP
(`jobs`, `datasets`, `models`, `sample`), built on :mod:`llm_train_api.client`."""

from .catalog import models
from .datasets import datasets
from .jobs import jobs
from .sample import sample

__all__ = ["datasets", "jobs", "models", "sample"]
