"""Following a job's log live: Server-Sent Events, resumed across reconnections.

The server ends each stream after LLM_TRAIN_API_LOG_FOLLOW_MAX_S and proxies drop idle
connections, so a follower is a loop of streams joined by ``Last-Event-ID`` (the byte offset
after the last line received): no line is lost or repeated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from llm_train_api.client.errors import ApiConnectionError, TooManyRequests
from llm_train_api.client.models import LogLine
from llm_train_api.client.retry import TRANSIENT, failure_reason

if TYPE_CHECKING:
    from llm_train_api.client.client import Client

__all__ = ["LogFollower"]


@dataclass
class _SSEEvent:
    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None


def _sse_events(resp: requests.Response) -> Iterator[_SSEEvent]:
    """Server-Sent Events from a streamed response, as they arrive."""
    buffer = b""
    current = _SSEEvent()
    for chunk in resp.iter_content(chunk_size=None):
        buffer += chunk
        while (cut := buffer.find(b"\n")) >= 0:
            raw, buffer = buffer[:cut], buffer[cut + 1:]
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if current.data or current.event != "message":
                    yield current
                current = _SSEEvent(id=None)
                continue
            if line.startswith(":"):
                continue  # a keep-alive comment
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                current.data.append(value)
            elif name == "event":
                current.event = value
            elif name == "id":
                current.id = value


class LogFollower:
    """The iterator :meth:`Client.follow_logs` returns (see there)."""

    def __init__(self, client: Client, job_id: str, *, tail: int | None,
                 offset: int | None) -> None:
        self.client = client
        self.job_id = job_id
        self.tail = tail
        #: Byte offset after the last line received: where a reconnection resumes.
        self.offset = offset
        #: How the job ended (``succeeded``, ``failed``, ``cancelled``, ``deleted``) once
        #: the stream has said so; None before.
        self.final_status: str | None = None

    def __iter__(self) -> Iterator[LogLine]:
        client = self.client
        path = f"/jobs/{quote(str(self.job_id), safe='')}/logs"
        failures = 0
        while True:
            params: dict[str, Any] = {"follow": "true"}
            headers = {"Accept": "text/event-stream"}
            if self.offset is not None:
                headers["Last-Event-ID"] = str(self.offset)
            elif self.tail is not None:
                params["tail"] = self.tail
            try:
                resp = client._request("GET", path, retry=True, params=params,
                                       headers=headers, stream=True)
            except TooManyRequests as busy:
                # A stream cap of the server (per user or per process): a slot frees up
                # when another stream ends, so wait as asked, as often as the policy allows.
                failures += 1
                if failures >= client.retry.attempts:
                    raise
                time.sleep(client.retry.delay(failures, busy.retry_after))
                continue
            reason = "the log stream ended without an end event"
            try:
                for event in _sse_events(resp):
                    if event.event == "end":
                        self.final_status = "\n".join(event.data) or None
                        return
                    if event.event == "timeout":
                        # The server's time limit for one stream: resume where it stopped.
                        reason = ""
                        break
                    if event.event == "message":
                        failures = 0
                        if event.id is not None and event.id.isdigit():
                            self.offset = int(event.id)
                        # One event is one log line; a CRLF line end arrives as a last,
                        # empty data field, which is no part of the line.
                        yield LogLine("\n".join(event.data).rstrip("\n"), self.offset)
            except TRANSIENT as exc:
                reason = failure_reason(exc)
            finally:
                resp.close()
            if reason:
                # Dropped (a server restart, a proxy): reconnect from the last offset, but
                # only as many times in a row as the retry policy allows.
                failures += 1
                if failures >= client.retry.attempts:
                    raise ApiConnectionError(f"GET {client.url}{path}: {reason}")
                time.sleep(client.retry.delay(failures))
