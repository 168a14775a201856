"""Validation of an uploaded dataset's bytes as they stream in, chunk by chunk.

A `.txt` upload must be UTF-8; a `.jsonl` upload one record per line, all of one kind of
`training.formats` (text, chat, instruction or preference). Refusals are InvalidContent
(a 422) naming the first bad line, so the uploader knows what to fix; nothing is stored.
"""

from __future__ import annotations

import codecs

import orjson

from llm_train_api.artifacts.dataset_errors import InvalidContent
from llm_train_api.training.formats import FormatError, KindDetector

MAX_JSONL_LINE_BYTES = 16 * 1024 * 1024


class TextValidator:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._line = 1

    def feed(self, chunk: bytes, final: bool = False) -> None:
        try:
            self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            pending = exc.object[: max(exc.start, 0)]
            line = self._line + pending.count(b"\n")
            raise InvalidContent(f"Line {line} is not valid UTF-8 ({exc.reason}).") from None
        self._line += chunk.count(b"\n")


class JsonlValidator:
    """Each line a record of one kind (training.formats): text, chat, instruction or
    preference."""

    def __init__(self) -> None:
        self._partial = b""
        self._line = 0
        self._kinds = KindDetector()

    @property
    def records(self) -> int:
        return self._kinds.records

    @property
    def kind(self) -> str | None:
        return self._kinds.kind

    def _check(self, line: bytes) -> None:
        self._line += 1
        if not line.strip():
            return
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidContent(f"Line {self._line} is not valid JSON: {exc}") from None
        try:
            self._kinds.check(record, self._line)
        except FormatError as exc:
            raise InvalidContent(str(exc)) from None

    def feed(self, chunk: bytes, final: bool = False) -> None:
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._check(line)
        if len(self._partial) > MAX_JSONL_LINE_BYTES:
            raise InvalidContent(f"Line {self._line + 1} is longer than "
                                 f"{MAX_JSONL_LINE_BYTES} bytes.")
        if final:
            if self._partial:
                self._check(self._partial)
            if not self.records:
                raise InvalidContent("A .jsonl dataset needs at least one record.")
