"""Why a dataset operation was refused: one class per reason. The API's error table
decides what a client sees for each, so nothing here speaks HTTP."""

from __future__ import annotations

from llm_train_api.domain import DomainError


class DatasetFileError(DomainError):
    """A refused dataset operation. Each subclass is one reason; the API's error table
    decides what a client sees for it, so this module never speaks HTTP."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidName(DatasetFileError):
    """Not a name a dataset could ever have."""


class ReadOnly(DatasetFileError):
    """Built in (or, for a user, published): not theirs to replace or delete."""


class NotFound(DatasetFileError):
    """No dataset of that name where the caller looked."""


class Conflict(DatasetFileError):
    """Queued or running jobs still need it, or it is a folder managed on disk."""


class TooLarge(DatasetFileError):
    """The upload is over LLM_TRAIN_API_MAX_DATASET_BYTES."""


class InvalidContent(DatasetFileError):
    """Not UTF-8 text, or not JSON Lines records with a `text` field, or empty."""


class TooMany(DatasetFileError):
    """A new dataset over LLM_TRAIN_API_MAX_DATASETS_PER_USER."""


class OverQuota(DatasetFileError):
    """The upload would take the owner's storage over their quota (see StorageQuota)."""

    def __init__(self, message: str, usage_bytes: int, limit_bytes: int) -> None:
        super().__init__(message)
        self.usage_bytes = usage_bytes
        self.limit_bytes = limit_bytes


class DiskFull(DatasetFileError):
    """The disk (or a filesystem quota) ran out before the upload was stored."""
