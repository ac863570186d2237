"""Handler deadlines: one timer for all running handlers instead of one each.

`asyncio.timeout` per handler costs a timer handle and a heap entry per message (and
cancelled handles stay in the loop's heap until they would have fired). Handlers share
one timeout, so deadlines are grouped in buckets of `granularity` seconds and a single
`call_at` is armed for the earliest bucket. A handler is cancelled between `timeout`
and `timeout + granularity` seconds after it started. Memory is bounded by the number
of running handlers: a finished handler leaves its bucket at once.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.granularity = min(max(timeout / 100, 0.01), 1.0)
        self._buckets: dict[int, set[asyncio.Task]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for: int | None = None
        self.expired: set[asyncio.Task] = set()  # cancelled by us; the handler task claims it

    def watch(self, task: asyncio.Task) -> int:
        """Start the clock for `task`; returns the key `unwatch` needs."""
        loop = asyncio.get_running_loop()
        key = math.ceil((loop.time() + self.timeout) / self.granularity)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            if self._armed_for is None or key < self._armed_for:
                self._arm(loop, key)
        bucket.add(task)
        return key

    def unwatch(self, task: asyncio.Task, key: int) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(task)
            if not bucket:
                del self._buckets[key]
        self.expired.discard(task)

    def claim(self, task: asyncio.Task) -> bool:
        """True (once) if `task` was cancelled because its deadline passed."""
        if task in self.expired:
            self.expired.discard(task)
            return True
        return False

    def _arm(self, loop: asyncio.AbstractEventLoop, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = key
        self._timer = loop.call_at(key * self.granularity, self._fire)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = self._armed_for = None
        now_key = math.floor(loop.time() / self.granularity)
        for key in sorted(k for k in self._buckets if k <= now_key):
            for task in self._buckets.pop(key):
                if not task.done():
                    self.expired.add(task)
                    task.cancel()
        if self._buckets:
            self._arm(loop, min(self._buckets))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._armed_for = None
        self._buckets.clear()
        self.expired.clear()
