import io
import math

from llm_train_api.training.events import EVENT_PREFIX, EventWriter, format_event, parse_line


def test_round_trip_and_strict_json():
    line = format_event("metrics", step=3, train_loss=math.nan, val_loss=1.5)
    assert line.startswith(EVENT_PREFIX) and "\n" not in line and "NaN" not in line
    event = parse_line(line + "\n")
    assert event["event"] == "metrics" and event["step"] == 3
    assert event["train_loss"] is None and event["val_loss"] == 1.5 and event["v"] == 1


def test_non_protocol_lines_are_ignored():
    for line in ["step 10 loss 3.2", "", "@@llm_train_api {broken", "@@llm_train_api [1]",
                 '@@llm_train_api {"no_event": 1}', b"\xff\xfe", "x@@llm_train_api {}"]:
        assert parse_line(line) is None


def test_writer_prefixes_events_but_not_logs():
    out = io.StringIO()
    writer = EventWriter(out)
    writer.log("hello")
    writer.emit("done", outcome="succeeded")
    lines = out.getvalue().splitlines()
    assert lines[0] == "hello" and parse_line(lines[0]) is None
    assert parse_line(lines[1])["outcome"] == "succeeded"
