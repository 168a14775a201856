"""When the client sends a request again: the retry policy and the failures it retries.

Kept apart from the Client so that the rules (which failures are transient, how long to
wait, the server's Retry-After) read in one place, and the log follower shares them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import requests

__all__ = ["NO_RETRY", "TRANSIENT", "RetryPolicy", "failure_reason", "retry_after"]

# Failures after which the request may be sent again (when it is safe to): no connection,
# no answer in time, or a connection that broke in the middle of the answer.
TRANSIENT = (requests.ConnectionError, requests.Timeout,
             requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class RetryPolicy:
    """How the client retries requests that are safe to repeat.

    `attempts` counts every try (1 disables retries). The n-th retry waits
    ``min(max_backoff_s, backoff_s * 2**(n-1))`` times a jitter in [0.5, 1], or the
    server's ``Retry-After`` when it sends one (at most `max_retry_after_s`).
    """

    attempts: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    max_retry_after_s: float = 10.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({502, 503, 504}))

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after_s))
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (retry - 1))
        return base * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(attempts=1)


def retry_after(resp: requests.Response) -> float | None:
    """The server's Retry-After in seconds; None when absent or an HTTP date."""
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def failure_reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, which is what a human needs to read."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.rstrip(")'\"").strip() or type(exc).__name__
