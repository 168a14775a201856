"""Dataset record formats: what a JSON Lines record may look like, and which kind a file is.

Torch-free and standard library only: the API validates uploads with it, the fine-tuning
trainer reads datasets with it. Three kinds of JSON Lines records, one kind per file:

* ``text``: ``{"text": "..."}``; the kind every ``.jsonl`` dataset had before the others,
  so a record with a string ``text`` field is a text record whatever else it holds (extra
  fields are ignored, as they always were).
* ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "...",
  "weight": 0|1}, ...]}`` (the OpenAI fine-tuning shape); ``weight`` is allowed on
  assistant messages only and says whether that message is learnt (default 1). At least
  one assistant message must be learnt, or the record teaches nothing.
* ``instruction``: ``{"prompt": "...", "completion": "..."}``; the completion is learnt.

A file's kind is the kind of its first record; every later record must be of the same
kind. Refusals name the first bad line (1-based, blank lines counted) and why, so an
upload can say exactly what to fix. A ``.txt`` file is plain text: kind ``text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT = "text"
CHAT = "chat"
INSTRUCTION = "instruction"
KINDS = (CHAT, INSTRUCTION, TEXT)
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "weight"})


class FormatError(ValueError):
    """A record that is not of any kind, or not of the file's kind; the message names
    the line."""


def record_kind(record: Any) -> str:
    """The kind of one decoded record, or ``ValueError`` saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("must be a JSON object")
    if isinstance(record.get("text"), str):
        return TEXT
    if "messages" in record:
        _check_messages(record["messages"])
        return CHAT
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"an instruction record needs a string {key!r} field")
        if not record["completion"]:
            raise ValueError("the 'completion' is empty: nothing to learn")
        return INSTRUCTION
    raise ValueError("must be an object with a string 'text' field (text), a 'messages' "
                     "list (chat), or 'prompt' and 'completion' strings (instruction)")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    learnt = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object")
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)} "
                             f"(allowed: content, role, weight)")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"{where}.content must be a string")
        if "weight" in message:
            weight = message["weight"]
            if role != "assistant":
                raise ValueError(f"{where}: 'weight' is allowed on assistant messages only")
            if isinstance(weight, bool) or weight not in (0, 1):
                raise ValueError(f"{where}.weight must be 0 or 1, not {weight!r}")
        if role == "assistant" and message.get("weight", 1) == 1:
            learnt += 1
    if not learnt:
        raise ValueError("no assistant message to learn (every one is missing or has "
                         "weight 0)")


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


class KindDetector:
    """Checks records one by one and holds the file's kind (that of the first record)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.records = 0

    def check(self, record: Any, line: int) -> str:
        """The record's kind, or :class:`FormatError` naming ``line``."""
        try:
            kind = record_kind(record)
        except ValueError as exc:
            raise FormatError(f"Line {line}: {exc}.") from None
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise FormatError(f"Line {line} is {_article(kind)} record, but the file is "
                              f"{self.kind} (from its first record); use one kind per file.")
        self.records += 1
        return kind


@dataclass(frozen=True)
class Record:
    """One example as the fine-tuning trainer reads it: ``data`` is the decoded object
    (``{"text": ...}`` for a ``.txt`` file), ``source`` says where it came from."""

    kind: str
    data: dict[str, Any]
    source: str


def read_records(files: Iterable[Path]) -> Iterator[Record]:
    """Every record of a dataset's files, in order, all of one kind.

    A ``.txt`` file is one ``text`` record; a ``.jsonl`` file one record per non-blank
    line. Raises :class:`FormatError` naming the file and line of the first bad record,
    or when the files mix kinds.
    """
    detector = KindDetector()
    for file in files:
        if file.suffix != ".jsonl":
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise FormatError(f"{file.name}: not UTF-8 ({exc.reason}).") from None
            kind = detector.check({"text": text}, 1)
            yield Record(kind, {"text": text}, file.name)
            continue
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise FormatError(f"{file.name}: Line {lineno} is not valid JSON: "
                                      f"{exc}.") from None
                try:
                    kind = detector.check(record, lineno)
                except FormatError as exc:
                    raise FormatError(f"{file.name}: {exc}") from None
                yield Record(kind, record, f"{file.name}:{lineno}")
