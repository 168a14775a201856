"""The webhook sender: works through the outbox (store/webhooks.py), one signed POST per
delivery, with retries on an exponential schedule.

It runs as a thread of every worker and as `llm-train-api webhooks-sender`; any number may
run at once on any hosts, since the database hands each due delivery to one claimer at a
time. A sender killed mid-delivery leaves its claim to expire, and the delivery is sent
again then: delivery is at least once, and receivers deduplicate on `webhook-id`.

Each attempt re-checks the URL against the SSRF guard (ssrf.py) and connects to the very
address it checked, sending the URL's own host in `Host` (and as the TLS server name). It
follows no redirect, and gives up on a connection or an answer after `timeout_s`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llm_train_api.config import Settings
from llm_train_api.services.webhooks import signing, ssrf
from llm_train_api.store.outbox import DELIVERED, EVENT_PREFIXES, FAILED, OPENAI_API, PENDING
from llm_train_api.store.rows import from_us, now_us
from llm_train_api.store.webhooks import Claimed, Delivery, WebhookRepository

log = logging.getLogger("llm_train_api.webhooks")
USER_AGENT = "llm-train-api-webhooks/0.1"
MAX_DELAY_S = 3600.0  # the longest wait between two attempts
_JITTER = 0.25  # each delay grows by up to this share, so retries of many do not align
_ERROR_EXCERPT = 300  # characters of an answer's body kept with a failed attempt
_MIN_WAIT_S = 0.02


@dataclass(frozen=True)
class SenderConfig:
    allow_private: bool = False
    timeout_s: float = 5.0
    backoff_s: float = 10.0
    max_age_s: float = 86400.0
    # How often an idle sender looks for due deliveries (one indexed read).
    poll_s: float = 1.0
    # Deliveries sent at once (each on its own thread: a slow receiver holds up one).
    concurrency: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderConfig:
        return cls(allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
                   timeout_s=settings.WEBHOOK_TIMEOUT_S, backoff_s=settings.WEBHOOK_BACKOFF_S,
                   max_age_s=settings.WEBHOOK_MAX_AGE_S,
                   poll_s=min(1.0, settings.POLL_S * 2))

    @property
    def claim_s(self) -> float:
        """How long a claim lasts: room for the connect and the answer (each bounded by
        the timeout) and the DNS lookup."""
        return self.timeout_s * 2 + 2


def retry_delay(attempts: int, base_s: float) -> float:
    """The wait after the `attempts`-th failed attempt: base, 2 base, 4 base, ... capped
    at an hour, each stretched by up to 25% (so below the cap a later wait is always the
    longer one)."""
    delay = min(base_s * 2 ** max(attempts - 1, 0), max(MAX_DELAY_S, base_s))
    return delay * (1 + random.random() * _JITTER)


def payload(delivery: Delivery) -> dict[str, Any]:
    """What is POSTed for a delivery. Native events follow the Standard Webhooks shape
    (`type`, `timestamp`, `data`); OpenAI-named ones OpenAI's own (`object: "event"`,
    `created_at` in seconds, `data.id`)."""
    if delivery.event_type.startswith(EVENT_PREFIXES[OPENAI_API]):
        return {"id": delivery.id, "object": "event",
                "created_at": int(delivery.occurred_at.timestamp()),
                "type": delivery.event_type, "data": {"id": delivery.job_id}}
    return {
        "type": delivery.event_type,
        "timestamp": delivery.occurred_at.isoformat(),
        "data": {
            "job_id": delivery.job_id,
            "status": delivery.job_status,
            "previous_status": delivery.previous_status,
            "owner": delivery.job_owner,
            "error_message": delivery.error_message,
            "job_created_at": from_us(delivery.job_created_us).isoformat(),
        },
    }


def body_of(delivery: Delivery) -> bytes:
    return json.dumps(payload(delivery), separators=(",", ":"), ensure_ascii=False).encode()


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to the checked address, with the URL's host in the Host header."""

    def __init__(self, target: ssrf.Target, ip: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to the checked address; the certificate must name the URL's host."""

    def __init__(self, target: ssrf.Target, ip: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout,
                         context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(url: str, body: bytes, headers: dict[str, str], *, allow_private: bool,
         timeout_s: float) -> tuple[int, str]:
    """POST `body` to `url` once: the status and the start of the answer's body. Raises
    ssrf.UnsafeURL for a refused address, OSError (and http.client's errors) for a
    transport failure."""
    target, addresses = ssrf.check(url, allow_private=allow_private)
    cls = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = cls(target, str(addresses[0]), timeout_s)
    try:
        conn.request("POST", target.path, body=body, headers={
            **headers, "Content-Type": "application/json", "User-Agent": USER_AGENT})
        response = conn.getresponse()
        excerpt = response.read(_ERROR_EXCERPT).decode("utf-8", "replace")
        return response.status, excerpt
    finally:
        conn.close()


class WebhookSender:
    """Claims due deliveries and sends them until `stop` is set."""

    def __init__(self, repository: WebhookRepository, config: SenderConfig, *,
                 sender_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.repository = repository
        self.config = config
        self.id = sender_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency,
                                        thread_name_prefix="webhook-send")
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        log.info("webhook sender %s: started", self.id)
        while not self.stopping.is_set():
            try:
                sent = self.run_once()
            except Exception:  # noqa: BLE001 - a database hiccup: log it, try again later
                log.warning("webhook sender: a round failed", exc_info=True)
                sent = 0
            if not sent:
                self.stopping.wait(self._idle_wait())
        self._pool.shutdown(wait=True)
        log.info("webhook sender %s: stopped", self.id)

    def _idle_wait(self) -> float:
        """Until the next retry falls due, or `poll_s` at most (new events may come)."""
        try:
            due = self.repository.next_due_us()
        except Exception:  # noqa: BLE001 - the next round reports it
            return self.config.poll_s
        if due is None:
            return self.config.poll_s
        # A floor: a due delivery another sender is claiming right now is no reason to spin.
        return min(max((due - now_us()) / 1e6, _MIN_WAIT_S), self.config.poll_s)

    def run_once(self) -> int:
        """Send what is due now (up to `concurrency` deliveries); how many were taken."""
        if not self.repository.any_due():
            return 0
        claimed = self.repository.claim_due(self.id, self.config.claim_s,
                                            self.config.concurrency)
        list(self._pool.map(self.deliver, claimed))
        return len(claimed)

    def start(self) -> threading.Thread:
        """Run the loop on a daemon thread (a worker's); `stop` ends it."""
        self._thread = threading.Thread(target=self.run, name="webhook-sender", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Finish the attempts in flight (each bounded by the timeout), then return."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(self.config.claim_s if timeout is None else timeout)

    # ------------------------------------------------------------------ one delivery
    def deliver(self, claimed: Claimed) -> str:
        """One attempt at one delivery, and its outcome recorded; the new state."""
        delivery = claimed.delivery
        body = body_of(delivery)
        sent_at = int(self._clock())
        headers = signing.headers(claimed.secret, delivery.id, sent_at, body)
        status: int | None = None
        error: str | None = None
        try:
            status, excerpt = post(claimed.url, body, headers,
                                   allow_private=self.config.allow_private,
                                   timeout_s=self.config.timeout_s)
            if not 200 <= status < 300:
                error = f"HTTP {status}: {excerpt}".strip()[:_ERROR_EXCERPT]
        except ssrf.UnsafeURL as exc:
            error = f"refused: {exc}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_EXCERPT] or "connection failed"
        if error is None:
            state, next_us = DELIVERED, None
        else:
            delay = retry_delay(delivery.attempts, self.config.backoff_s)
            next_us = now_us() + int(delay * 1e6)
            deadline = (int(delivery.occurred_at.timestamp() * 1e6)
                        + int(self.config.max_age_s * 1e6))
            state = PENDING if next_us <= deadline else FAILED
            if state == FAILED:
                next_us = None
        recorded = self.repository.record(claimed, state=state, status_code=status,
                                          error=error, next_attempt_us=next_us)
        # Neither the secret nor the URL (whose query may hold a receiver's token) is logged.
        log.info("webhook %s %s to %s: attempt %d, %s%s", delivery.id, delivery.event_type,
                 delivery.webhook_id, delivery.attempts, state if error is None else error,
                 "" if recorded else " (claim lost: not recorded)")
        return state
