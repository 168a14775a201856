"""Keyset pagination: the query a page is asked with, and the opaque cursor between pages.

A cursor is the sort key (created_us, seq) of the last job on the previous page. Pages are
therefore disjoint and complete while other clients insert, and every page costs one index
range scan however deep it is (no OFFSET anywhere).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime

from llm_train_api.domain import Job, JobStatus

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_VERSION = 1
_BAD_CURSOR = "Invalid cursor: use the URL from the previous page's Link header."


class InvalidCursor(ValueError):
    """The cursor was not produced by this service (or was altered)."""


@dataclass(frozen=True, slots=True)
class SortKey:
    created_us: int
    seq: int


@dataclass(frozen=True, slots=True)
class JobQuery:
    statuses: tuple[JobStatus, ...] = ()
    owner: str | None = None  # a user sees only their own jobs; None = everyone's
    model_name: str | None = None
    dataset: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = DEFAULT_LIMIT
    after: SortKey | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job] = field(default_factory=list)
    next_key: SortKey | None = None


def encode_cursor(key: SortKey) -> str:
    raw = json.dumps([_CURSOR_VERSION, key.created_us, key.seq], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        version, created_us, seq = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise InvalidCursor(_BAD_CURSOR) from None
    if version != _CURSOR_VERSION or not all(
        type(v) is int and 0 <= v < 2**63 for v in (created_us, seq)
    ):
        raise InvalidCursor(_BAD_CURSOR)
    return SortKey(created_us, seq)


def encode_seq_cursor(seq: int) -> str:
    """Cursor for lists ordered by an increasing sequence number (a job's events)."""
    return encode_cursor(SortKey(0, seq))


def decode_seq_cursor(cursor: str) -> int:
    return decode_cursor(cursor).seq
