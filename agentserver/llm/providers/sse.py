"""Server-sent events, decoded from bytes with no I/O (the WHATWG rules, bounded).

`SseDecoder.feed(bytes)` returns the events completed by those bytes; HTTP providers
feed it whatever chunks the response gives. Lines end with LF, CRLF or CR (a CR at the
end of a chunk waits for the next chunk); `data:` lines of one event are joined with
LF; comments (`:`) and `id:`/`retry:` fields are ignored; an event is dispatched at a
blank line if it had a `data:` line, and an unfinished event at the end of the stream is dropped, as the
standard says. An event (or a line) longer than `max_event_bytes` raises `SseError`,
so a broken server cannot make the client buffer without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SseEvent", "SseDecoder", "SseError"]


class SseError(ValueError):
    """The byte stream is not usable server-sent events."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "message" unless an `event:` field named it
    data: str


class SseDecoder:
    """Bytes in, complete events out."""

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        self._max = max_event_bytes
        self._buffer = bytearray()
        self._event = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        start = 0
        buffer = self._buffer
        while True:
            cr, lf = buffer.find(b"\r", start), buffer.find(b"\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if buffer[end] == 0x0D:  # CR: one ending, or the first half of CRLF
                if end + 1 == len(buffer):
                    break  # wait: the LF may be in the next chunk
                step = 2 if buffer[end + 1] == 0x0A else 1
            else:
                step = 1
            line = bytes(buffer[start:end])
            start = end + step
            event = self._line(line)
            if event is not None:
                events.append(event)
        del buffer[:start]
        if len(buffer) > self._max:
            raise SseError(f"a line of the event stream is longer than {self._max} bytes")
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        if not raw:  # dispatch, if any data line came (the standard's rule)
            event = SseEvent(self._event or "message", "\n".join(self._data)) if self._data else None
            self._event, self._data, self._size = "", [], 0
            return event
        self._size += len(raw)
        if self._size > self._max:
            raise SseError(f"an event of the stream is longer than {self._max} bytes")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SseError(f"the event stream is not UTF-8 ({exc.reason})") from None
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None
