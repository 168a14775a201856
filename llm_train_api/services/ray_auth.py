"""The token for a Ray cluster that requires one (Ray 2.52+ token authentication).

A Ray head started with RAY_AUTH_MODE=token answers 401 (no token) or 403 (wrong token) on
its dashboard and Job Submission API unless the request carries `Authorization: Bearer
<token>`. Ours comes from LLM_TRAIN_API_RAY_TOKEN; when that is empty, from Ray's own
variables, resolved the way Ray's clients resolve them (Ray's AuthenticationTokenLoader): only
with RAY_AUTH_MODE=token, then RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH,
else ~/.ray/auth_token, each stripped of surrounding whitespace.

Standard library only (API hosts need no ray). The token is a secret: nothing here puts it
in a message; errors name the variable it came from instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llm_train_api.config import ConfigError

SETTING = "LLM_TRAIN_API_RAY_TOKEN"


@dataclass(frozen=True)
class RayToken:
    """A resolved token (empty: send none) and where it came from, for messages."""

    value: str = field(default="", repr=False)
    source: str = ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"} if self.value else {}


def resolve(configured: str, environ: Mapping[str, str] | None = None) -> RayToken:
    """LLM_TRAIN_API_RAY_TOKEN (`configured`), else Ray's own token, else none."""
    environ = os.environ if environ is None else environ
    if configured.strip():
        return RayToken(configured.strip(), SETTING)
    if environ.get("RAY_AUTH_MODE", "").strip().lower() != "token":
        return RayToken()  # Ray's clients send no token either
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return RayToken(environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    path_var = environ.get("RAY_AUTH_TOKEN_PATH", "")
    if path_var:
        # Ray treats an unreadable or empty token file as a misconfiguration, not "no token".
        try:
            value = Path(path_var).expanduser().read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path_var!r} cannot be read "
                              f"({exc.strerror or exc})") from None
        if not value:
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH={path_var!r} is empty")
        return RayToken(value, "RAY_AUTH_TOKEN_PATH")
    default = Path(environ.get("HOME") or Path.home()) / ".ray" / "auth_token"
    try:
        value = default.read_text("utf-8").strip()
    except OSError:
        return RayToken()
    return RayToken(value, str(default)) if value else RayToken()


def refusal(address: str, status: int, token: RayToken,
            environ: Mapping[str, str] | None = None) -> str:
    """What to tell the operator when the Ray cluster at `address` answered 401 or 403."""
    environ = os.environ if environ is None else environ
    if status == 401 or not token.value:
        hint = ""
        if environ.get("RAY_AUTH_TOKEN") and environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint = (" (RAY_AUTH_TOKEN is set, but Ray's clients, and this service, only use "
                    "it with RAY_AUTH_MODE=token)")
        return (f"the Ray cluster at {address} requires a token (Ray token authentication) "
                f"and none was sent{hint}: set {SETTING} to the cluster's token (the "
                "RAY_AUTH_TOKEN its head was started with, or `ray get-auth-token` there)")
    return (f"the Ray cluster at {address} refused the token from {token.source} "
            f"(HTTP {status}: wrong token): set {SETTING} to the cluster's token")
