"""Fair queues: round-robin across clients, then across their conversations. No I/O.

Work waits under two keys: an *outer* key (who the work is for: an external client's
session, or `system`) and an *inner* key (which of its conversations). `pop` serves
the outer keys round-robin, one item per turn, and within one outer key its inner
keys round-robin, so a client flooding with 5,000 conversations gets one turn like a
client with one, and inside a client a chatty conversation cannot starve a quiet one.

- breadth-first: each inner queue is FIFO (a conversation's messages in order);
- depth-first: each inner queue is LIFO (a conversation follows its newest branch to
  the end before older siblings), still round-robin across keys.

Intake items are counted so the caller can bound them (`intake_size`; `pop` says
whether the item came in through intake); the queue itself never refuses anything
(handlers must not block on their own output).
The same class orders the pump's queued units and the units parked for a listener.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Hashable, TypeVar

__all__ = ["FairScheduler"]

T = TypeVar("T")


class _Lane(Generic[T]):
    """One outer key's work: inner keys round-robin."""

    __slots__ = ("queues", "ring", "size")

    def __init__(self) -> None:
        self.queues: dict[Hashable, deque[T]] = {}
        self.ring: deque[Hashable] = deque()
        self.size = 0

    def push(self, inner: Hashable, item: T) -> None:
        queue = self.queues.get(inner)
        if queue is None:
            queue = self.queues[inner] = deque()
            self.ring.append(inner)
        queue.append(item)
        self.size += 1

    def pop(self, lifo: bool) -> T:
        inner = self.ring[0]
        queue = self.queues[inner]
        item = queue.pop() if lifo else queue.popleft()
        if queue:
            self.ring.rotate(-1)
        else:
            self.ring.popleft()
            del self.queues[inner]
        self.size -= 1
        return item


class FairScheduler(Generic[T]):
    def __init__(self, depth_first: bool = False) -> None:
        self.depth_first = depth_first
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._ring: deque[Hashable] = deque()  # outer keys with work, in turn order
        self._intake: set[int] = set()  # ids of the waiting items that came in through intake
        self.intake_size = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, outer: Hashable, item: T, *, inner: Hashable = None, intake: bool = False) -> None:
        lane = self._lanes.get(outer)
        if lane is None:
            lane = self._lanes[outer] = _Lane()
            self._ring.append(outer)
        lane.push(inner, item)
        self.size += 1
        if intake:
            self._intake.add(id(item))
            self.intake_size += 1

    def pop(self) -> tuple[T, bool] | None:
        """The next (item, was_intake), or None when nothing waits."""
        if not self._ring:
            return None
        outer = self._ring[0]
        lane = self._lanes[outer]
        item = lane.pop(self.depth_first)
        if lane.size:
            self._ring.rotate(-1)
        else:
            self._ring.popleft()
            del self._lanes[outer]
        self.size -= 1
        intake = False
        if self.intake_size and id(item) in self._intake:
            self._intake.discard(id(item))
            self.intake_size -= 1
            intake = True
        return item, intake

    def inner_keys(self) -> list[Hashable]:
        """The inner key of every waiting item (for reports; the queue is unchanged)."""
        return [inner for lane in self._lanes.values() for inner, queue in lane.queues.items() for _ in queue]

    def drain(self) -> list[T]:
        """Remove and return everything still waiting (shutdown)."""
        items = [item for lane in self._lanes.values() for queue in lane.queues.values() for item in queue]
        self._lanes.clear()
        self._ring.clear()
        self._intake.clear()
        self.size = self.intake_size = 0
        return items
