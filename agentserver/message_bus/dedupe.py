"""Publisher dedupe: a client that lost an ack may send the same message again.

A client may give its envelopes its own message id (`<id>`). Once such a message is
accepted, its (sender, id) is remembered for `window_s` seconds; the same pair again in
that time is acked again and not processed a second time. Bounded in time and in
entries (the oldest go first). With a journal the pairs survive a restart. No I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

__all__ = ["Dedupe", "WINDOW_S"]

WINDOW_S = 600.0  # ten minutes, like a client's retry horizon
MAX_ENTRIES = 200_000


class Dedupe:
    def __init__(self, clock: Callable[[], float], *, window_s: float = WINDOW_S, max_entries: int = MAX_ENTRIES) -> None:
        self.clock = clock  # wall time: the window must hold across a restart
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()  # oldest first
        self.on_remember: Callable[[str, str, float], object] | None = None  # the journal keeps them too

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, sender: str, message_id: str) -> bool:
        """True if `sender` had message `message_id` accepted within the window."""
        when = self._seen.get((sender, message_id))
        return when is not None and self.clock() - when <= self.window_s

    def remember(self, sender: str, message_id: str, when: float | None = None) -> None:
        now = self.clock() if when is None else when
        key = (sender, message_id)
        self._seen[key] = now
        self._seen.move_to_end(key)
        while self._seen and (len(self._seen) > self.max_entries or now - next(iter(self._seen.values())) > self.window_s):
            self._seen.popitem(last=False)
        if when is None and self.on_remember is not None:
            self.on_remember(sender, message_id, now)
