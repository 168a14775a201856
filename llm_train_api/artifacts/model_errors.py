"""Why a model operation was refused: one class per reason. The API's error table decides
what a client sees for each, so nothing here speaks HTTP. A full disk and the storage
quota are the same refusals as for datasets (dataset_errors.DiskFull and OverQuota)."""

from __future__ import annotations

from llm_train_api.domain import DomainError


class ModelError(DomainError):
    """A refused model operation."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModelName(ModelError):
    """Not a name a model could ever have."""


class ModelNotFound(ModelError):
    """No model of that name that the caller may see."""


class ModelConflict(ModelError):
    """The name is a built-in model or a folder under LLM_TRAIN_API_MODEL_ROOTS, or queued
    or running jobs name the model."""


class ModelReadOnly(ModelError):
    """A published model, which a user may use but not delete."""


class ModelTooLarge(ModelError):
    """The archive, or what it unpacks to, is over LLM_TRAIN_API_MAX_MODEL_UPLOAD_GB."""


class InvalidModel(ModelError):
    """The archive or the model folder in it is refused: a hostile member (absolute path,
    '..', link, device), an unexpected or pickle file, a bad config.json or safetensors
    file. The message names the member and the problem."""
