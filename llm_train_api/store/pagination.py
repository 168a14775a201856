"""Keyset pagination: the query a page is asked with, and the opaque cursor between pages.

A cursor is the sort key (created_us, seq) of the last job on the previous page. Pages are
therefore disjoint and complete while other clients insert, and every page costs one index
range scan however deep it is (no OFFSET anywhere).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from llm_train_api.domain import Job, JobStatus

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A cursor is `1.<created_us>.<seq>`, both in hex and below 2**63. Every string this
# pattern matches is a cursor the service accepts (an unknown key just positions the page),
# so the OpenAPI document can state the pattern and hold the service to it.
CURSOR_PATTERN = r"^1\.[0-7]?[0-9a-f]{1,15}\.[0-7]?[0-9a-f]{1,15}$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)
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
    return f"1.{key.created_us:x}.{key.seq:x}"


def decode_cursor(cursor: str) -> SortKey:
    if not _CURSOR_RE.fullmatch(cursor):
        raise InvalidCursor(_BAD_CURSOR)
    _version, created_us, seq = cursor.split(".")
    return SortKey(int(created_us, 16), int(seq, 16))


def encode_seq_cursor(seq: int) -> str:
    """Cursor for lists ordered by an increasing sequence number (a job's events)."""
    return encode_cursor(SortKey(0, seq))


def decode_seq_cursor(cursor: str) -> int:
    return decode_cursor(cursor).seq
