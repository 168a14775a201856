"""Dataset record formats: kinds, detection, and refusals that name the first bad line."""

from __future__ import annotations

import json

import pytest

from llm_train_api.training.formats import (
    CHAT,
    INSTRUCTION,
    TEXT,
    FormatError,
    KindDetector,
    read_records,
    record_kind,
)

CHAT_RECORD = {"messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello", "weight": 0},
                            {"role": "user", "content": "again"},
                            {"role": "assistant", "content": "hello again"}]}


@pytest.mark.parametrize(("record", "kind"), [
    ({"text": "x"}, TEXT),
    # A text field wins, as it did before chat and instruction records existed.
    ({"text": "x", "messages": "not a list", "prompt": 1}, TEXT),
    (CHAT_RECORD, CHAT),
    ({"messages": [{"role": "assistant", "content": ""}], "id": 7}, CHAT),
    ({"prompt": "", "completion": "y"}, INSTRUCTION),
])
def test_kinds(record, kind):
    assert record_kind(record) == kind


@pytest.mark.parametrize(("record", "why"), [
    ([1], "JSON object"),
    ({"txt": "x"}, "'text' field"),
    ({"text": 1}, "'text' field"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x", "weight": 1},
                   {"role": "assistant", "content": "y"}]}, "assistant messages only"),
    ({"messages": [{"role": "assistant", "content": "y", "weight": 2}]}, "0 or 1"),
    ({"messages": [{"role": "assistant", "content": "y", "weight": True}]}, "0 or 1"),
    ({"messages": [{"role": "assistant", "content": "y", "name": "z"}]}, "unknown field(s) name"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": "y", "weight": 0}]}, "no assistant message"),
    ({"prompt": "x"}, "'completion'"),
    ({"prompt": "x", "completion": ""}, "nothing to learn"),
])
def test_bad_records_say_why(record, why):
    with pytest.raises(ValueError, match=None) as info:
        record_kind(record)
    assert why in str(info.value)


def test_the_first_record_decides_the_kind_and_the_first_bad_line_is_named():
    detector = KindDetector()
    assert detector.check({"prompt": "a", "completion": "b"}, 1) == INSTRUCTION
    with pytest.raises(FormatError, match=r"^Line 4 is a text record, but the file is "
                                          r"instruction"):
        detector.check({"text": "x"}, 4)
    with pytest.raises(FormatError, match=r"^Line 5: .*'completion'"):
        detector.check({"prompt": "a"}, 5)
    assert detector.kind == INSTRUCTION and detector.records == 1


def test_read_records_reads_txt_and_jsonl_and_names_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\n", encoding="utf-8")
    good = tmp_path / "b.jsonl"
    good.write_text(json.dumps(CHAT_RECORD) + "\n\n" + json.dumps(CHAT_RECORD) + "\n")
    assert [r.kind for r in read_records([tmp_path / "a.txt"])] == [TEXT]
    records = list(read_records([good]))
    assert [r.source for r in records] == ["b.jsonl:1", "b.jsonl:3"]
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps(CHAT_RECORD) + "\n{oops\n")
    with pytest.raises(FormatError, match=r"^c.jsonl: Line 2 is not valid JSON"):
        list(read_records([bad]))
    with pytest.raises(FormatError, match=r"b.jsonl: Line 1 is a chat record, but the file "
                                          r"is text"):
        list(read_records([tmp_path / "a.txt", good]))
