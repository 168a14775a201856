"""Long-lived responses (log follow streams): how many one server process holds, and how
a view hands one over to the server instead of holding a request thread.

Two caps, counted in each server process: LOG_STREAMS_PER_PROCESS in all, and
LOG_STREAMS_PER_USER for one principal. Beyond either, a follow request is a 429 with
`Retry-After`; an open stream ends after LOG_FOLLOW_MAX_S at the latest, so a slot frees
up within that time. Counting per process keeps the check free of any shared state: a
user's streams across the service are at most (processes x LOG_STREAMS_PER_USER).

Under the service's gunicorn worker (api.gunicorn_worker.ServiceWorker) the view does not
stream: it puts a `DetachedStream` in the WSGI environ, the worker writes the response
head and gives the socket to the process's StreamHub (api.stream_hub), and the request
thread is free at once. Under any other WSGI server (Flask's test client, a development
server) the view streams from a generator on the request thread, counted the same way.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llm_train_api.artifacts.logs import LogFollower
from llm_train_api.domain import DomainError

# The WSGI environ keys between the serving worker and the view.
STREAM_HUB_KEY = "llm_train_api.stream_hub"  # set by the worker: streams can be detached
DETACHED_STREAM_KEY = "llm_train_api.detached_stream"  # set by the view: detach this one
SLOTS_KEY = "llm_train_api.stream_slots"  # app.extensions: this process's StreamSlots

# Job id -> (status, created_us) for the jobs that exist (store.jobs.JobRepository).
JobStates = Callable[[Iterable[str]], dict[str, tuple[str, int]]]


class TooManyStreams(DomainError):
    """A stream cap is reached: 429, with the seconds after which to try again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class StreamSlots:
    """The open streams of this process, in all and per owner."""

    per_process: int
    per_owner: int  # 0: no per-owner cap
    retry_after: int = 5
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _by_owner: Counter[str] = field(default_factory=Counter, repr=False)
    _total: int = 0

    @property
    def active(self) -> int:
        return self._total

    def owned_by(self, owner: str) -> int:
        return self._by_owner[owner]

    def acquire(self, owner: str) -> Callable[[], None]:
        """Take a slot for `owner`, or raise TooManyStreams. Returns the slot's release,
        which may be called any number of times (only the first counts)."""
        with self._lock:
            if self._total >= self.per_process:
                raise TooManyStreams(
                    f"This server process already holds {self._total} log streams "
                    f"(LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS={self.per_process}); retry "
                    "later.", self.retry_after)
            if self.per_owner and self._by_owner[owner] >= self.per_owner:
                raise TooManyStreams(
                    f"You already have {self._by_owner[owner]} log streams open on this "
                    f"server process (LLM_TRAIN_API_LOG_STREAMS_PER_USER={self.per_owner}); "
                    "close one or retry later.", self.retry_after)
            self._total += 1
            self._by_owner[owner] += 1
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                self._total -= 1
                self._by_owner[owner] -= 1
                if not self._by_owner[owner]:
                    del self._by_owner[owner]

        return release


@dataclass
class DetachedStream:
    """What a view hands the serving worker: a log stream to serve off the request thread.

    `job_states` reads the states of many jobs at once; the hub asks it about every job
    it streams once per poll, in one query, to learn which streams must end.
    """

    follower: LogFollower
    job_id: str
    created_us: int
    job_states: JobStates
    release: Callable[[], None]

    def discard(self) -> None:
        """The stream will not be served after all: give back what it holds."""
        self.follower.close()
        self.release()
