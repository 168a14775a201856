"""A small schemathesis driver for tests/test_fuzz_api.py.

It runs every operation of a live server's own `/openapi.json` through schemathesis's
positive and negative generators with hypothesis directly (one bounded, derandomized
`@given` per operation and mode), sends each case over HTTP and runs the checks on every
response. Failures are collected instead of raised, so one run reports every distinct
problem (each with a curl reproduction) and an exact count of the cases it sent.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Statuses that carry no body by definition.
_BODYLESS = {204, 304}


def json_error_shape(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx is JSON `{code, status, message, errors?}` with `code` == the status."""
    status = response.status_code
    if status < 400:
        return None
    media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if media != "application/json":
        raise AssertionError(f"error {status} is not JSON (Content-Type {media!r})")
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"error {status} has a body that is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AssertionError(f"error {status} body is not an object: {body!r}"[:300])
    problems = []
    if body.get("code") != status:
        problems.append(f"code={body.get('code')!r}")
    if not isinstance(body.get("status"), str) or not body.get("status"):
        problems.append(f"status={body.get('status')!r}")
    if not isinstance(body.get("message"), str) or not body.get("message"):
        problems.append(f"message={body.get('message')!r}")
    if "errors" in body and not isinstance(body["errors"], dict | list):
        problems.append(f"errors={body['errors']!r}")
    if problems:
        raise AssertionError(f"error {status} body has a bad shape ({', '.join(problems)}): "
                             f"{json.dumps(body)[:300]}")
    return None


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    json_error_shape,
]


@dataclass
class Finding:
    operation: str
    check: str
    status: int
    title: str
    message: str
    curl: str
    body: str
    count: int = 1

    def render(self) -> str:
        return (f"[{self.check}] {self.operation} -> {self.status} (x{self.count}): {self.title}\n"
                f"    {self.message.strip()[:600]}\n"
                f"    response: {self.body[:300]}\n"
                f"    reproduce: {self.curl}")


@dataclass
class FuzzRun:
    label: str
    cases: int = 0
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)  # (operation, status) -> count
    per_operation: Counter = field(default_factory=Counter)
    findings: dict[tuple[str, str, int, str], Finding] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # transport errors (timeouts, resets)
    unsatisfiable: list[str] = field(default_factory=list)  # operation+mode with no cases

    @property
    def failures(self) -> int:
        return len(self.findings) + len(self.errors)

    def summary_line(self) -> str:
        return (f"schemathesis [{self.label}]: {self.cases} cases over "
                f"{len(self.per_operation)} operations in {self.seconds:.1f} s, "
                f"{self.failures} failures")

    def status_table(self) -> str:
        by_op: dict[str, list[str]] = {}
        for (op, status), n in sorted(self.statuses.items()):
            by_op.setdefault(op, []).append(f"{status}x{n}")
        return "\n".join(f"    {op}: {' '.join(v)}" for op, v in by_op.items())

    def report(self) -> str:
        lines = [self.summary_line(), self.status_table()]
        if self.unsatisfiable:
            lines.append(f"    no cases (nothing to negate): {', '.join(self.unsatisfiable)}")
        lines += [f.render() for f in self.findings.values()]
        lines += [f"[transport] {e}" for e in self.errors]
        return "\n".join(lines)


def make_session(token: str | None) -> requests.Session:
    """Requests authenticate by header only: the session stores no cookies at all."""
    session = requests.Session()
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def auth_headers(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def _record(run: FuzzRun, case: Any, response: Any, failure: BaseException, check: str,
            headers: dict[str, str], base_url: str) -> None:
    title = getattr(failure, "title", type(failure).__name__)
    message = getattr(failure, "message", None) or str(failure)
    key = (case.operation.label, check, response.status_code, title)
    found = run.findings.get(key)
    if found is not None:
        found.count += 1
        return
    try:
        curl = case.as_curl_command(headers=headers, base_url=base_url)
    except Exception as exc:  # noqa: BLE001 - a reproduction is best effort
        curl = f"<no curl: {exc}>"
    body = response.content[:600].decode("utf-8", "replace")
    run.findings[key] = Finding(case.operation.label, check, response.status_code, title,
                                message, curl, body)


def _flatten(exc: BaseException) -> Iterable[BaseException]:
    inner_exceptions = getattr(exc, "exceptions", None)  # FailureGroup, any exception group
    if inner_exceptions is not None:
        for inner in inner_exceptions:
            yield from _flatten(inner)
    else:
        yield exc


def fuzz(
    base_url: str,
    *,
    token: str | None,
    label: str,
    max_examples: int,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    path_values: dict[tuple[str, str], Callable[[requests.Session], str]] | None = None,
    body_values: dict[str, dict[str, Any]] | None = None,
    timeout_s: float = 10.0,
    checks: list[Callable[..., Any]] | None = None,
) -> FuzzRun:
    """Fuzz every operation in `base_url`/openapi.json; see the module docstring.

    `path_values[(path_prefix, parameter)](session)` makes a resource and returns its name
    (a fresh job for `("/jobs/", "job_id")`): in positive mode about half the cases of an
    operation whose path starts with the prefix get that path parameter replaced by one,
    so that the handlers past the 404 get exercised too. `body_values[label]` likewise
    overwrites those fields of half the positive JSON bodies of that operation (valid model
    and dataset names, which a generator cannot guess).
    """
    checks = CHECKS if checks is None else checks
    headers = auth_headers(token)
    session = make_session(token)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers,
                                           timeout=timeout_s)
    run = FuzzRun(label)
    started = time.monotonic()
    hyp_settings = settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in modes:
            _fuzz_operation(run, operation, mode, hyp_settings, session, headers, base_url,
                            timeout_s, checks, path_values or {},
                            (body_values or {}).get(operation.label))
    run.seconds = time.monotonic() - started
    return run


def _fuzz_operation(run, operation, mode, hyp_settings, session, headers, base_url, timeout_s,
                    checks, path_values, body_value) -> None:
    strategy = operation.as_strategy(generation_mode=mode)
    makers = {param: make for (prefix, param), make in path_values.items()
              if operation.path.startswith(prefix) and f"{{{param}}}" in operation.path}
    can_use_real = bool(makers or body_value) and mode is GenerationMode.POSITIVE
    real = st.booleans() if can_use_real else st.just(False)

    @hyp_settings
    @given(case=strategy, use_real=real)
    def one(case: Any, use_real: bool) -> None:
        if use_real and body_value and isinstance(case.body, dict):
            case.body = {**case.body, **body_value}
        if use_real and makers:
            case.path_parameters = {**(case.path_parameters or {}),
                                    **{param: make(session) for param, make in makers.items()}}
        run.cases += 1
        run.per_operation[operation.label] += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers,
                                 timeout=timeout_s)
        except requests.RequestException as exc:
            curl = case.as_curl_command(headers=headers, base_url=base_url)
            run.errors.append(f"{operation.label}: {type(exc).__name__}: {exc}\n"
                              f"    reproduce: {curl}")
            return
        run.statuses[(operation.label, response.status_code)] += 1
        for check in checks:
            try:
                case.validate_response(response, checks=[check], headers=headers,
                                       transport_kwargs={"base_url": base_url,
                                                         "headers": headers})
            except (Failure, AssertionError, FailureGroup) as exc:
                for failure in _flatten(exc):
                    _record(run, case, response, failure, check.__name__, headers, base_url)

    try:
        one()
    except Unsatisfiable:
        # Nothing to negate (an operation without parameters or body): no cases to send.
        run.unsatisfiable.append(f"{operation.label} ({mode.value})")


_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns():x}-{next(_counter)}"
