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
* ``preference``: a prompt and two answers, the chosen one preferred (for DPO), in either
  of two shapes: ``{"prompt", "chosen", "rejected"}`` (TRL's: three strings, or a message
  list prompt and message list answers) or ``{"input": {"messages": [...]},
  "preferred_output": [...], "non_preferred_output": [...]}`` (OpenAI's and Together's:
  messages). :func:`preference_pair` brings both to ``(prompt, chosen, rejected)``. The
  answers are assistant messages only, and they are what the pair compares.

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
PREFERENCE = "preference"
KINDS = (CHAT, INSTRUCTION, PREFERENCE, TEXT)
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = frozenset({"role", "content", "weight"})
#: Keys that make a record a preference pair, whatever else it holds.
TRL_PAIR_KEYS = ("chosen", "rejected")
OPENAI_PAIR_KEYS = ("preferred_output", "non_preferred_output")


class FormatError(ValueError):
    """A record that is not of any kind, or not of the file's kind; the message names
    the line."""


def record_kind(record: Any) -> str:
    """The kind of one decoded record, or ``ValueError`` saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("must be a JSON object")
    if isinstance(record.get("text"), str):
        return TEXT
    if any(key in record for key in TRL_PAIR_KEYS + OPENAI_PAIR_KEYS):
        preference_pair(record)
        return PREFERENCE
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
                     "list (chat), 'prompt' and 'completion' strings (instruction), or 'prompt', "
                     "'chosen' and 'rejected' (preference)")


def _check_messages(messages: Any, name: str = "messages") -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{name!r} must be a non-empty list")
    learnt = 0
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
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


def _check_answer(answer: Any, name: str) -> None:
    """A preference answer: one or more assistant messages, nothing else."""
    for i, message in enumerate(answer if isinstance(answer, list) else []):
        if isinstance(message, dict) and (message.get("role") != "assistant"
                                          or "weight" in message):
            raise ValueError(f"{name}[{i}] must be an assistant message (role "
                             "'assistant', no 'weight'): the answers are what is compared")
    _check_messages(answer, name)


def preference_pair(record: Any) -> tuple[str | list[dict[str, Any]], Any, Any]:
    """``(prompt, chosen, rejected)`` of a preference record in either shape: three strings,
    or a message list and two lists of assistant messages. ``ValueError`` says what is
    wrong."""
    if not isinstance(record, dict):
        raise ValueError("must be a JSON object")
    if any(key in record for key in OPENAI_PAIR_KEYS):
        extra = sorted(k for k in ("prompt", "chosen", "rejected") if k in record)
        if extra:
            raise ValueError(f"mixes the two preference shapes ({', '.join(extra)} with "
                             "preferred_output): use one")
        source = record.get("input")
        if not isinstance(source, dict) or "messages" not in source:
            raise ValueError("a preference record with 'preferred_output' needs an "
                             "'input' object with a 'messages' list")
        prompt, chosen, rejected = (source["messages"], record.get("preferred_output"),
                                    record.get("non_preferred_output"))
        names = ("input.messages", "preferred_output", "non_preferred_output")
    else:
        prompt, chosen, rejected = (record.get("prompt"), record.get("chosen"),
                                    record.get("rejected"))
        names = ("prompt", "chosen", "rejected")
    if isinstance(prompt, str):
        for value, name in ((chosen, names[1]), (rejected, names[2])):
            if not isinstance(value, str) or not value:
                raise ValueError(f"with a string 'prompt', {name!r} must be a non-empty "
                                 "string")
        return prompt, chosen, rejected
    if not isinstance(prompt, list):
        raise ValueError(f"a preference record needs {names[0]!r}: a string, or a list "
                         "of messages")
    for i, message in enumerate(prompt):
        if isinstance(message, dict) and message.get("role") == "assistant" \
                and "weight" in message:
            raise ValueError(f"{names[0]}[{i}]: 'weight' has no meaning in a prompt")
    if not prompt:
        raise ValueError(f"{names[0]!r} must be a non-empty list")
    # A conversation's checks, less "something to learn" (a prompt is context only).
    _check_messages(prompt + [{"role": "assistant", "content": ""}], names[0])
    _check_answer(chosen, names[1])
    _check_answer(rejected, names[2])
    return prompt, chosen, rejected


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
