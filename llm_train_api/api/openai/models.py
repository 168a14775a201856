"""`/v1/models`: the models of this service in OpenAI's shape. A fine-tuned model made
by a `/v1` job is listed under its OpenAI name (`ft:<base>:<org>[:<suffix>]:<job>`),
every other model under its native name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask.views import MethodView

from llm_train_api.api.auth import current_principal
from llm_train_api.api.base import get_runtime, get_settings
from llm_train_api.api.openai.base import OpenAIBlueprint
from llm_train_api.api.openai.fine_tuning import visible_job
from llm_train_api.api.openai.schemas import OpenAIModelListSchema, OpenAIModelSchema
from llm_train_api.artifacts.model_errors import ModelNotFound
from llm_train_api.domain import JobNotFound, is_valid_job_id
from llm_train_api.services import models as model_access
from llm_train_api.services.openai_compat.names import (
    JOB_PREFIX,
    job_of_model_name,
    openai_model_name,
    suffix_of_native,
)
from llm_train_api.services.openai_compat.objects import fine_tuned_model_name, model_object

blp = OpenAIBlueprint("openai_models", __name__, url_prefix="/v1/models",
                      description="OpenAI-compatible model list: base and fine-tuned "
                      "models of this service.")


def _openai_id(model: dict[str, Any]) -> str:
    """The id `/v1` gives a native model (see the module doc)."""
    job_id = model.get("job_id")
    if model.get("source") == "job" and job_id and job_id.startswith(JOB_PREFIX):
        suffix = suffix_of_native(model["name"], job_id)
        if suffix is not False:
            return openai_model_name(model.get("base_model") or "", model.get("owner"),
                                     suffix or None, job_id)
    return str(model["name"])


def _as_object(model: dict[str, Any]) -> dict[str, Any]:
    created = model.get("created_at")
    owned_by = model.get("owner") or ("system" if model.get("kind") == "builtin"
                                      else "organization")
    return model_object(_openai_id(model),
                        created if isinstance(created, datetime) else None, owned_by)


def _place() -> model_access.Place:
    return model_access.Place.of(get_runtime().data_dir, get_settings())


@blp.route("")
class Models(MethodView):
    @blp.response(200, OpenAIModelListSchema)
    def get(self):
        """List models (built-in, imported, root folders and fine-tuned)"""
        models = model_access.list_visible(_place(), current_principal())
        return {"object": "list", "data": [_as_object(m) for m in models]}


@blp.route("/<model_id>")
class ModelResource(MethodView):
    @blp.response(200, OpenAIModelSchema)
    @blp.error(404, "No such model (or another user's).")
    def get(self, model_id: str):
        """Get a model; a fine-tuned one by its `ft:` name"""
        job_id = job_of_model_name(model_id)
        native = model_id
        if job_id is not None:
            try:
                job = visible_job(job_id) if is_valid_job_id(job_id) else None
            except JobNotFound:
                job = None
            if job is None or fine_tuned_model_name(job) != model_id:
                raise ModelNotFound(f"The model {model_id!r} does not exist.")
            native = job.fine_tuned_model or model_id
        model = model_access.get_visible(_place(), current_principal(), native)
        shown = _as_object(model)
        return {**shown, "id": model_id}
