"""The token bucket, on a fake clock: refill, first-come-first-served waiting, debt,
and correct accounting when a waiter is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from agentserver.llm.bucket import TokenBucket
from tests.fake_llm import FakeTime


class ManualTime(FakeTime):
    """Sleeps block until the test moves the clock (`advance`)."""

    def __init__(self) -> None:
        super().__init__()
        self._tick = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        until = self.now + seconds
        while self.now < until:
            self._tick.clear()
            await self._tick.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._tick.set()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_tokens_refill_continuously_up_to_one_minute():
    ft = FakeTime()
    bucket = TokenBucket(600, clock=ft.clock, sleep=ft.sleep)  # 10 a second
    await bucket.take(600)
    assert bucket.available == 0
    ft.now += 3
    assert bucket.available == pytest.approx(30)
    ft.now += 3600
    assert bucket.available == 600


async def test_a_take_waits_for_what_is_missing():
    ft = FakeTime()
    bucket = TokenBucket(600, clock=ft.clock, sleep=ft.sleep)
    await bucket.take(550)
    await bucket.take(100)  # 50 there, 50 missing: 5 s
    assert ft.sleeps == [pytest.approx(5.0)]
    assert bucket.available == pytest.approx(0)


async def test_more_than_the_capacity_is_refused_at_once():
    ft = FakeTime()
    bucket = TokenBucket(100, clock=ft.clock, sleep=ft.sleep)
    with pytest.raises(ValueError, match="more than the bucket holds"):
        await bucket.take(101)
    assert ft.sleeps == [] and bucket.available == 100


async def test_waiters_are_served_in_arrival_order():
    mt = ManualTime()
    bucket = TokenBucket(60, clock=mt.clock, sleep=mt.sleep)  # 1 a second
    await bucket.take(60)
    order: list[str] = []

    async def take(name: str, tokens: int) -> None:
        await bucket.take(tokens)
        order.append(name)

    big = asyncio.create_task(take("big", 30))
    await settle()
    small = asyncio.create_task(take("small", 1))  # would fit sooner, but waits its turn
    await settle()
    mt.advance(5)
    await settle()
    assert order == [] and bucket.waiting == 2
    mt.advance(25)
    await asyncio.wait_for(big, 5)
    assert order == ["big"]  # small now waits for its own token
    mt.advance(1)
    await asyncio.wait_for(small, 5)
    assert order == ["big", "small"]


async def test_a_cancelled_waiter_takes_nothing_and_hands_its_turn_on():
    mt = ManualTime()
    bucket = TokenBucket(60, clock=mt.clock, sleep=mt.sleep)
    await bucket.take(60)
    first = asyncio.create_task(bucket.take(30))
    await settle()
    second = asyncio.create_task(bucket.take(10))
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await settle()
    mt.advance(10)
    await asyncio.wait_for(second, 5)
    assert bucket.waiting == 0
    assert bucket.available == pytest.approx(0)  # 10 refilled, 10 taken by second, none by the cancelled one


async def test_give_back_and_charge_correct_the_estimate():
    ft = FakeTime()
    bucket = TokenBucket(100, clock=ft.clock, sleep=ft.sleep)
    await bucket.take(80)
    bucket.give_back(50)
    assert bucket.available == 70
    bucket.charge(100)  # spent more than estimated: in debt
    assert bucket.available == -30
    bucket.give_back(1000)
    assert bucket.available == 100  # never above capacity
