"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks
with any off-the-shelf verifier (the `standardwebhooks` package, svix's libraries).

A secret is `whsec_` and the base64 of 32 random bytes. Each message carries
`webhook-id` (the same on every retry), `webhook-timestamp` (seconds since the epoch) and
`webhook-signature: v1,<base64 of HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed message."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, msg_id, timestamp, body)}
