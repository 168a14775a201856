"""What every resource blueprint shares: strict JSON parsing and access to the runtime."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Blueprint
from flask_smorest.error_handler import ErrorSchema

from llm_train_api.api.errors import StrictJSONParser
from llm_train_api.config import Settings
from llm_train_api.runtime import Runtime
from llm_train_api.store.jobs import JobRepository

RUNTIME_KEY = "llm_train_api.runtime"


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = StrictJSONParser()

    def error(self, status: int, description: str):
        """Document an error response in the OpenAPI spec, in the shape the handlers emit."""
        return self.alt_response(status, schema=ErrorSchema, description=description)


def get_runtime() -> Runtime:
    """The app's runtime (create_app builds it), for the request being served."""
    return current_app.extensions[RUNTIME_KEY]


def get_settings() -> Settings:
    return get_runtime().settings


def get_jobs() -> JobRepository:
    """The job repository the views read and change jobs through."""
    return get_runtime().jobs
