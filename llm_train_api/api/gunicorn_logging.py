"""gunicorn's access logger for the service (named in gunicorn_conf.py): API tokens never
reach a log file.

`RedactingLogger` is gunicorn's logger with API tokens removed from every access-log field:
a token sent in a query string or a header must not land in a log file.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

REDACTED = "[redacted]"
# The service's tokens (store/tokens.py: "ltk_" and URL-safe base64), wherever they appear.
_TOKEN = re.compile(r"ltk_[A-Za-z0-9_-]+")
# The values of query parameters that commonly carry credentials, whatever they look like.
_SECRET_PARAM = re.compile(r"(?i)(^|[?&;])((?:access_)?token|api_key)=[^&;#\s\"]*")
# Request headers whose whole value is a credential.
_SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{proxy-authorization}i")


def redact(text: str) -> str:
    """`text` with tokens and the values of token-like query parameters replaced."""
    text = _TOKEN.sub(REDACTED, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}", text)


class RedactingLogger(Logger):
    """gunicorn's logger; every string the access log format can name is redacted."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any],
              request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if name in _SECRET_HEADERS or name.lower() in ("{http_authorization}e",
                                                           "{http_cookie}e"):
                atoms[name] = REDACTED
            elif isinstance(value, str):
                atoms[name] = redact(value)
        return atoms
