"""Fair scheduling of work across conversations and clients. No I/O.

Work waits in one queue per *key*: an external client's name for intake, a
conversation's id for handler responses. `pop` serves the keys round-robin, one item
per turn, so a chatty conversation or a flooding client cannot starve a quiet one.

- breadth-first: each key's queue is FIFO (a conversation's messages in order);
- depth-first: each key's queue is LIFO (a conversation follows its newest branch to
  the end before older siblings), still round-robin across keys.

Intake items are counted so the caller can bound them (`intake_size`); responses are
never refused (handlers must not block on their own output).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

__all__ = ["FairScheduler"]

T = TypeVar("T")


class FairScheduler(Generic[T]):
    def __init__(self, depth_first: bool = False) -> None:
        self.depth_first = depth_first
        self._queues: dict[Hashable, deque[tuple[T, bool]]] = {}
        self._ring: deque[Hashable] = deque()  # keys with work, in turn order
        self.intake_size = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, key: Hashable, item: T, *, intake: bool = False) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._ring.append(key)
        queue.append((item, intake))
        self.size += 1
        if intake:
            self.intake_size += 1

    def pop(self) -> tuple[T, bool] | None:
        """The next (item, was_intake), or None when nothing waits."""
        if not self._ring:
            return None
        key = self._ring.popleft()
        queue = self._queues[key]
        item, intake = queue.pop() if self.depth_first else queue.popleft()
        if queue:
            self._ring.append(key)
        else:
            del self._queues[key]
        self.size -= 1
        if intake:
            self.intake_size -= 1
        return item, intake

    def drain(self) -> list[T]:
        """Remove and return everything still waiting (shutdown)."""
        items = [item for queue in self._queues.values() for item, _ in queue]
        self._queues.clear()
        self._ring.clear()
        self.size = self.intake_size = 0
        return items
