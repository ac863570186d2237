"""dead_letters.py: a bounded record, oldest first out, bytes truncated, JSON-ready."""

import json

from agentserver.message_bus.dead_letters import DeadLetters


def record(letters: DeadLetters, n: int, raw: bytes = b"<x/>", reason: str = "why") -> None:
    letters.record(time=float(n), code="no-route", reason=reason, step="routing", sender="alice", thread=f"t{n}",
                   raw=raw, conversation="c")


def test_the_oldest_records_fall_off_but_the_total_counts_all():
    letters = DeadLetters(capacity=3)
    for n in range(5):
        record(letters, n)
    assert len(letters) == 3 and letters.total == 5
    assert [r.thread for r in letters.recent()] == ["t2", "t3", "t4"]
    assert [r.thread for r in letters.recent(2)] == ["t3", "t4"]


def test_raw_bytes_are_truncated_and_say_so():
    letters = DeadLetters(max_raw_bytes=4)
    record(letters, 0, raw=b"12345")
    record(letters, 1, raw=b"1234")
    long, exact = letters.recent()
    assert (long.raw, long.truncated) == (b"1234", True)
    assert (exact.raw, exact.truncated) == (b"1234", False)


def test_the_reason_is_capped():
    letters = DeadLetters()
    record(letters, 0, reason="x" * 5000)
    assert len(letters.recent()[0].reason) == 2000


def test_as_dict_is_json_ready_with_utc_iso_time_and_text():
    letters = DeadLetters()
    letters.record(time=0.25, code="malformed", reason="r", step="repair", sender="s", thread="t", raw=b"<a>\xff")
    record_ = letters.recent()[0].as_dict()
    assert record_["time"] == "1970-01-01T00:00:00.250+00:00"
    assert record_["raw"] == "<a>\ufffd" and record_["conversation"] == ""
    assert json.loads(json.dumps(record_))["code"] == "malformed"
