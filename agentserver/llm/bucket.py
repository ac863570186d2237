"""A token bucket over a backend's tokens per minute (`rate_limit_tpm`).

The bucket holds at most one minute of tokens and refills continuously. A request
takes its estimated tokens before it is sent, waiting (first come, first served) while
the bucket is short; afterwards the router corrects the charge with the real usage
(`give_back` the difference, or `charge` the excess: the bucket may go into debt,
which the refill repays).

A request larger than the whole bucket could never be served: `take` refuses it with
`ValueError` at once, and the router turns that into `RequestTooLarge` before it
gets here. Waiting is cancellation-safe: a waiter holds no lock and has taken nothing
until `take` returns, and a cancelled waiter leaves the queue and hands its turn on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """Tokens per minute, refilled continuously, served in arrival order."""

    def __init__(self, tokens_per_minute: int, *, clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[object]]) -> None:
        if tokens_per_minute <= 0:
            raise ValueError("tokens_per_minute must be positive")
        self.capacity = tokens_per_minute
        self._rate = tokens_per_minute / 60.0  # tokens per second
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(tokens_per_minute)
        self._stamp = clock()
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def available(self) -> float:
        """Tokens in the bucket now (negative while in debt)."""
        now = self._clock()
        self._tokens = min(float(self.capacity), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._tokens

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def can_take_now(self, tokens: int) -> bool:
        return not self._queue and self.available >= tokens

    async def take(self, tokens: int) -> None:
        """Remove `tokens` from the bucket, waiting in line until there are enough."""
        if tokens > self.capacity:
            raise ValueError(f"{tokens} tokens is more than the bucket holds ({self.capacity})")
        if self.can_take_now(tokens):
            self._tokens -= tokens
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            if self._queue[0] is not turn:
                await turn  # the waiter ahead hands the turn on when it leaves
            while (missing := tokens - self.available) > 0:
                await self._sleep(missing / self._rate)
            self._tokens -= tokens
        finally:
            self._queue.remove(turn)
            if self._queue and not self._queue[0].done():
                self._queue[0].set_result(None)

    def give_back(self, tokens: int) -> None:
        """Return tokens taken for a request that spent less (or was never sent)."""
        self._tokens = min(float(self.capacity), self.available + tokens)

    def charge(self, tokens: int) -> None:
        """Take tokens a request spent beyond its estimate (may leave the bucket in debt)."""
        self._tokens = self.available - tokens
