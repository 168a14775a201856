"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from flask.views import MethodView
from sqlalchemy.exc import SQLAlchemyError

from llm_train_api.api.auth import public
from llm_train_api.api.base import ApiBlueprint, get_runtime
from llm_train_api.api.schemas import HealthSchema
from llm_train_api.store.migrations import LATEST_VERSION

blp = ApiBlueprint("health", __name__, description="Liveness and readiness probes.")


@blp.route("/healthz")
@public
class Liveness(MethodView):
    @blp.response(200, HealthSchema)
    def get(self):
        """The process is up (touches nothing else)"""
        return {"status": "ok"}


@blp.route("/readyz")
@public
class Readiness(MethodView):
    @blp.response(200, HealthSchema)
    @blp.error(503, "The database is unreachable or its schema is not current.")
    def get(self):
        """The database answers and its schema is current"""
        database = get_runtime().database
        try:
            version = database.ping()
        except SQLAlchemyError as exc:
            return {"status": f"database unavailable: {type(exc).__name__}",
                    "database": database.dialect}, 503
        status = "ok" if version == LATEST_VERSION else f"schema version {version}"
        code = 200 if version == LATEST_VERSION else 503
        return {"status": status, "schema_version": version, "database": database.dialect}, code
