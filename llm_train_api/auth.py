"""Who is calling: bearer tokens, roles and the rules every endpoint shares.

(Being written for issue 5. The names below are the interface other modules use:
`public` marks a view that needs no token; `current_principal()` is the caller;
`authorize_scrape()` guards /metrics.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Role(str, enum.Enum):
    ADMIN = "admin"
    USER = "user"
    WORKER = "worker"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    token_id: int | None = None


def public(view: F) -> F:
    """Mark a view function (or MethodView class) as reachable without a token."""
    view._llm_train_api_public = True  # type: ignore[attr-defined]
    return view


def current_principal() -> Principal:
    return Principal("anonymous", Role.ADMIN)


def authorize_scrape() -> None:
    """Raise a 401/403 unless the caller is an admin or presents METRICS_TOKEN."""
