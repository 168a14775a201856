"""The model catalog: the GPT configurations the built-in trainer can train."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields

from llm_train_api.api.base import ApiBlueprint
from llm_train_api.training.catalog import MODELS, catalog_as_json

blp = ApiBlueprint(
    "models",
    __name__,
    url_prefix="/models",
    description="Models the built-in trainer knows, with their hyperparameter schemas.",
)


class HyperparameterSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True,
                         metadata={"enum": ["integer", "number", "boolean", "string"]})
    default = fields.Raw(allow_none=True, metadata={"description": "Used when omitted."})
    doc = fields.String(required=True)
    nullable = fields.Boolean(required=True)
    minimum = fields.Raw(metadata={"type": "number", "description": "Inclusive lower bound."})
    exclusive_minimum = fields.Raw(metadata={"type": "number",
                                             "description": "Exclusive lower bound."})
    maximum = fields.Raw(metadata={"type": "number", "description": "Inclusive upper bound."})
    choices = fields.List(fields.String(), metadata={"description": "Allowed values."})


class ModelSchema(Schema):
    name = fields.String(required=True, metadata={"description": "The job's `model_name`."})
    n_layer = fields.Integer(required=True)
    n_head = fields.Integer(required=True)
    n_embd = fields.Integer(required=True)
    vocab_size = fields.Integer(required=True, metadata={"description": "256: bytes."})
    block_size = fields.Integer(required=True, metadata={"description": "Longest context."})
    bias = fields.Boolean(required=True)
    param_count = fields.Integer(required=True,
                                 metadata={"description": "Trainable parameters."})
    description = fields.String(required=True)
    hyperparameters = fields.List(fields.Nested(HyperparameterSchema), required=True)


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    return {model["name"]: model for model in catalog_as_json()}


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelSchema(many=True), description="The catalog, smallest first.")
    def get(self):
        """List models"""
        return list(_catalog().values())


@blp.route("/<name>")
class ModelResource(MethodView):
    @blp.response(200, ModelSchema)
    @blp.error(404, "No such model.")
    def get(self, name: str):
        """Get one model"""
        model = _catalog().get(name)
        if model is None:
            abort(404, message=f"Model {name!r} not found; known models: {', '.join(MODELS)}.")
        return model
