"""Who the presented token belongs to: lets the CLI and the dashboard check a token."""

from __future__ import annotations

from flask.views import MethodView
from marshmallow import fields

from llm_train_api.api.auth import current_principal
from llm_train_api.api.base import ApiBlueprint, get_settings
from llm_train_api.api.schema_base import Schema

blp = ApiBlueprint("whoami", __name__, description="The caller's identity.")


class WhoAmISchema(Schema):
    name = fields.String(required=True, metadata={"description": "The token's name."})
    role = fields.String(required=True, metadata={"description": "admin, user or worker."})
    auth = fields.String(required=True, metadata={
        "description": "`required`, or `disabled` when the server runs without auth."})


@blp.route("/whoami")
class WhoAmI(MethodView):
    @blp.response(200, WhoAmISchema)
    def get(self):
        """The caller's name and role"""
        principal = current_principal()
        return {"name": principal.name, "role": principal.role.value,
                "auth": get_settings().AUTH}
