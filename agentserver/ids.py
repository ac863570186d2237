"""Ids that journals and other processes keep: random (version 4) UUIDs, made fast.

`uuid.uuid4()` reads the kernel's random source on every call, which costs more than
the rest of building an envelope. `IdSource` draws 128 bits from its own generator,
seeded once from `os.urandom`, and sets the version and variant bits as `uuid4` does:
ids are globally unique in practice (122 random bits), never per-process counters.
Each owner (a pump, a client) has its own source; nothing here is module-level state.
"""

from __future__ import annotations

import os
import random

__all__ = ["IdSource"]

_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4, RFC 4122 variant


class IdSource:
    def __init__(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits

    def new(self) -> str:
        """A fresh id, as UUID text (8-4-4-4-12 lowercase hex)."""
        h = "%032x" % ((self._bits(128) & _CLEAR) | _SET)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
