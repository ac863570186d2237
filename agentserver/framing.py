"""Socket framing: a 4-byte big-endian length, then that many bytes of one envelope.

`FrameDecoder` is a pure state machine (h11-style): give it bytes as they arrive
(`receive`), take frames out when you are ready for them (`next_event`), or do both at
once (`feed`). A header announcing more than `max_frame` bytes yields `Oversize` as
soon as it is taken (before the body is read), and the decoder then discards exactly
that many bytes as they arrive, without buffering them, so the connection stays
usable and memory stays flat.

Frames are cut when they are taken, not when bytes arrive, so `max_frame` may change
between two frames (the connection protocol raises it once a client has
authenticated) and a frame is judged by the limit in force when it is taken.
`buffered` is what the decoder holds; it never holds more than what it was given and
has not handed out or skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["encode_frame", "FrameDecoder", "Frame", "Oversize", "HEADER"]

HEADER = struct.Struct(">I")


def encode_frame(data: bytes) -> bytes:
    """The bytes that carry `data` as one frame."""
    return HEADER.pack(len(data)) + data


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes


@dataclass(frozen=True, slots=True)
class Oversize:
    length: int  # what the header announced


class FrameDecoder:
    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversize frame still to discard

    @property
    def buffered(self) -> int:
        """Bytes held: received, not yet handed out as frames, not skipped."""
        return len(self._buffer)

    @property
    def mid_frame(self) -> bool:
        """True when bytes of a frame not yet taken are held, or an oversize body is being
        skipped (a disconnect now cuts a frame)."""
        return bool(self._buffer) or self._skip > 0

    @property
    def frame_ready(self) -> bool:
        """True when `next_event` would return a frame or an `Oversize` without more bytes."""
        if self._skip or len(self._buffer) < HEADER.size:
            return False
        (length,) = HEADER.unpack_from(self._buffer)
        return length > self.max_frame or len(self._buffer) >= HEADER.size + length

    def receive(self, data: bytes) -> None:
        """Take bytes as they arrived (bytes of an oversize body are dropped here)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data

    def next_event(self) -> Frame | Oversize | None:
        """The next frame, an `Oversize` for a header over `max_frame`, or None (more bytes needed)."""
        if self._skip or len(self._buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer)
        if length > self.max_frame:
            dropped = min(length, len(self._buffer) - HEADER.size)
            del self._buffer[: HEADER.size + dropped]
            self._skip = length - dropped
            return Oversize(length)
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        frame = Frame(bytes(self._buffer[HEADER.size : end]))
        del self._buffer[:end]
        return frame

    def feed(self, data: bytes) -> list[Frame | Oversize]:
        """`receive(data)`, then every frame that is complete."""
        self.receive(data)
        events: list[Frame | Oversize] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events
