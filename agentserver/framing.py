"""Socket framing: a 4-byte big-endian length, then that many bytes of one envelope.

`FrameDecoder` is a pure state machine (h11-style): feed it bytes as they arrive, get
back events. A header announcing more than `max_frame` bytes yields `Oversize` at once
(before the body is read) and the decoder then discards exactly that many bytes as they
arrive, without buffering them, so the connection stays usable and memory stays flat.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["encode_frame", "FrameDecoder", "Frame", "Oversize", "HEADER"]

HEADER = struct.Struct(">I")


def encode_frame(data: bytes) -> bytes:
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
        return len(self._buffer)

    @property
    def mid_frame(self) -> bool:
        """True when a frame has started but not ended (a disconnect now cuts it)."""
        return bool(self._buffer) or self._skip > 0

    def feed(self, data: bytes) -> list[Frame | Oversize]:
        events: list[Frame | Oversize] = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                self._skip -= dropped
                del self._buffer[:dropped]
                if self._skip:
                    return events
            if len(self._buffer) < HEADER.size:
                return events
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame:
                del self._buffer[: HEADER.size]
                self._skip = length
                events.append(Oversize(length))
                continue
            end = HEADER.size + length
            if len(self._buffer) < end:
                return events
            events.append(Frame(bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
