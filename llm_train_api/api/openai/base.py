"""What the `/v1` blueprints share: a blueprint whose documented errors are OpenAI's
shape, and OpenAI's list envelope."""

from __future__ import annotations

from typing import Any

from llm_train_api.api.base import ApiBlueprint
from llm_train_api.api.openai.errors import OpenAIErrorSchema


class OpenAIBlueprint(ApiBlueprint):
    def error(self, status: int, description: str):
        """Document an error response in OpenAI's shape (api.openai.errors)."""
        return self.alt_response(status, schema=OpenAIErrorSchema, description=description)


def page(data: list[dict[str, Any]], has_more: bool, **extra: Any) -> dict[str, Any]:
    """OpenAI's list envelope: the SDK's cursor pages read `has_more` and take the last
    item's `id` as the next page's `after`."""
    return {"object": "list", "data": data, "has_more": has_more, **extra}
