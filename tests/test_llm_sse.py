"""The sans-IO pieces under the HTTP providers: the server-sent-events decoder (byte
tables, fed whole and one byte at a time), Retry-After parsing, and the table of
which HTTP statuses are whose fault."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from agentserver.llm.providers.base import FailureKind, classify_status, parse_retry_after, redact
from agentserver.llm.providers.sse import SseDecoder, SseError, SseEvent

CASES = [
    (b"data: hello\n\n", [SseEvent("message", "hello")]),
    (b"data:hello\r\n\r\n", [SseEvent("message", "hello")]),
    (b"data: a\rdata: b\r\r:", [SseEvent("message", "a\nb")]),  # a final CR waits: LF may follow
    (b"event: ping\ndata: {}\n\n", [SseEvent("ping", "{}")]),
    (b": a comment\nid: 7\nretry: 10\ndata: x\n\n", [SseEvent("message", "x")]),
    (b"data: one\n\ndata: two\n\n", [SseEvent("message", "one"), SseEvent("message", "two")]),
    (b"event: lonely\n\n", []),  # no data line: nothing to dispatch
    (b"data:\n\n", [SseEvent("message", "")]),
    (b"data: unfinished", []),  # dropped at the end of the stream, as the standard says
    (b"data:  two spaces\n\n", [SseEvent("message", " two spaces")]),
    ("data: caf\u00e9 \u2713\n\n".encode(), [SseEvent("message", "caf\u00e9 \u2713")]),
]


@pytest.mark.parametrize("stream, events", CASES)
def test_events_decode_the_same_whole_or_byte_by_byte(stream, events):
    assert SseDecoder().feed(stream) == events
    decoder = SseDecoder()
    one_by_one = [event for i in range(len(stream)) for event in decoder.feed(stream[i:i + 1])]
    assert one_by_one == events


def test_an_endless_line_or_event_is_refused():
    with pytest.raises(SseError, match="longer than 64 bytes"):
        SseDecoder(max_event_bytes=64).feed(b"data: " + b"x" * 100)
    decoder = SseDecoder(max_event_bytes=64)
    with pytest.raises(SseError, match="event of the stream is longer"):
        for _ in range(10):
            decoder.feed(b"data: " + b"x" * 20 + b"\n")


def test_bytes_that_are_not_utf8_are_refused():
    with pytest.raises(SseError, match="not UTF-8"):
        SseDecoder().feed(b"data: \xff\xfe\n\n")


@pytest.mark.parametrize("status, kind", [
    (400, FailureKind.REQUEST), (422, FailureKind.REQUEST), (413, FailureKind.REQUEST),
    (401, FailureKind.BACKEND), (403, FailureKind.BACKEND), (404, FailureKind.BACKEND),
    (408, FailureKind.TRANSIENT), (409, FailureKind.TRANSIENT), (429, FailureKind.TRANSIENT),
    (500, FailureKind.TRANSIENT), (503, FailureKind.TRANSIENT), (529, FailureKind.TRANSIENT),
])
def test_statuses_are_classified(status, kind):
    assert classify_status(status) is kind


NOW = 1_700_000_000.0


@pytest.mark.parametrize("header, seconds", [
    (None, None),
    ("", None),
    ("3", 3.0),
    (" 1.5 ", 1.5),
    ("-4", 0.0),
    ("inf", None),
    ("nan", None),
    ("soon", None),
    ("Wed, 99 Foo 2015 07:28:00 GMT", None),
    (format_datetime(datetime.fromtimestamp(NOW + 42, tz=timezone.utc), usegmt=True), 42.0),
    (format_datetime(datetime.fromtimestamp(NOW - 42, tz=timezone.utc), usegmt=True), 0.0),  # in the past
])
def test_retry_after_in_both_forms(header, seconds):
    assert parse_retry_after(header, now=lambda: NOW) == seconds


def test_redact_blanks_the_secret_and_cuts_long_text():
    assert redact("key sk-123 bad", "sk-123") == "key *** bad"
    assert redact("a\x00b\nc", None) == "a b c"
    assert redact("x" * 500, None, limit=10) == "x" * 10 + "…"
