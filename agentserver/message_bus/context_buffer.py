"""The context buffer: per-thread, append-only history of delivered messages.

Each message is recorded once, on the thread it is delivered on. The buffer is bounded
twice: a thread keeps at most `max_slots` entries (the oldest are evicted and counted
in `evicted`), and at most `max_threads` threads are kept (the least recently used is
evicted whole). Entries are immutable; handlers get a read-only tuple. No I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Iterable

from agentserver.message_bus.message_state import HistoryEntry

__all__ = ["ContextBuffer"]


class ContextBuffer:
    def __init__(self, max_slots: int = 256, max_threads: int = 10_000) -> None:
        self.max_slots = max_slots
        self.max_threads = max_threads
        self._threads: OrderedDict[str, deque[HistoryEntry]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._threads)

    @property
    def entries(self) -> int:
        return sum(len(slots) for slots in self._threads.values())

    def append(self, thread_id: str, entry: HistoryEntry) -> None:
        slots = self._threads.get(thread_id)
        if slots is None:
            if len(self._threads) >= self.max_threads:
                _, dropped = self._threads.popitem(last=False)
                self.evicted += len(dropped)
            slots = self._threads[thread_id] = deque(maxlen=self.max_slots)
        else:
            self._threads.move_to_end(thread_id)
            if len(slots) == self.max_slots:
                self.evicted += 1
        slots.append(entry)

    def history(self, thread_id: str) -> tuple[HistoryEntry, ...]:
        slots = self._threads.get(thread_id)
        return tuple(slots) if slots else ()

    def forget(self, thread_ids: Iterable[str]) -> None:
        for thread_id in thread_ids:
            self._threads.pop(thread_id, None)
