"""What every resource blueprint shares: strict JSON parsing and access to the store."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Blueprint
from flask_smorest.error_handler import ErrorSchema

from llm_train_api.api.errors import StrictJSONParser
from llm_train_api.config import Settings
from llm_train_api.runtime import Runtime
from llm_train_api.store.job_store import JobStore

STORE_KEY = "llm_train_api.store"
RUNTIME_KEY = "llm_train_api.runtime"


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = StrictJSONParser()

    def error(self, status: int, description: str):
        """Document an error response in the OpenAPI spec, in the shape the handlers emit."""
        return self.alt_response(status, schema=ErrorSchema, description=description)


def get_store() -> JobStore:
    return current_app.extensions[STORE_KEY]


def get_jobs() -> JobStore:
    """The job repository the views call."""
    return current_app.extensions[RUNTIME_KEY].store


def get_runtime() -> Runtime:
    return current_app.extensions[RUNTIME_KEY]


def get_settings() -> Settings:
    return current_app.extensions[RUNTIME_KEY].settings
