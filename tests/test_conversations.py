"""What one conversation may spend: a budget of units, a deadline, and cancel (DESIGN §10)."""

import asyncio
import gc
import time

import pytest

from agentserver import RemoteError
from tests.hardening_organisms import Bomb, Hang
from tests.organisms import PROBE, Echo
from tests.support import HANG_GUARD, listener, organism, settle

BOMB = listener("bomb", "Bomb", "bomb")
HANG = listener("hang", "Hang", "hang")
ECHO = listener("echo", "Echo", "echo")


def _hardening(name: str, kind: str, handler: str, **extra):
    entry = listener(name, kind, handler, **extra)
    entry["payload_class"] = f"tests.hardening_organisms.{kind}"
    entry["handler"] = f"tests.hardening_organisms.{handler}"
    return entry


BOMB = _hardening("bomb", "Bomb", "bomb")
HANG = _hardening("hang", "Hang", "hang")


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def test_a_fan_out_bomb_is_stopped_by_the_conversation_budget_and_others_are_served(start):
    # before the budget: 300 copies of itself to itself made ~200,000 units, +611 MiB, 97 s
    pump = await start(organism(BOMB, ECHO))
    await settle(pump)
    gc.collect()
    before = rss_mib()
    async with pump.client("bomber") as bomber, pump.client("bystander") as bystander:
        started = time.monotonic()
        with pytest.raises(RemoteError) as ended:
            await bomber.ask(Bomb(copies=300), to="bomb", timeout=HANG_GUARD)
        assert ended.value.code == "conversation-budget"
        reply = await bystander.ask(Echo(text="still here"), to="echo", timeout=HANG_GUARD)
        assert reply.payload.text == "still here"
        await settle(pump)
        elapsed = time.monotonic() - started
    growth = rss_mib() - before
    assert growth < 150, f"memory grew {growth:.0f} MiB"
    assert elapsed < 10, f"took {elapsed:.1f}s"  # a liveness bound; it takes well under a second here
    assert pump.counters.accepted < 5_000  # a few generations, not 200,000 units
    assert PROBE.counts["bomb"] <= 10
    assert pump.stores.threads.conversations == 0


async def test_a_conversation_over_its_units_in_all_is_ended_too(start):
    # every generation stays under the in-flight budget; the lifetime budget ends it
    pump = await start(organism(BOMB, limits={"max_conversation_units": 50, "max_thread_hops": 10_000}))
    async with pump.client("tester") as client:
        with pytest.raises(RemoteError) as ended:
            await client.ask(Bomb(copies=1), to="bomb", timeout=HANG_GUARD)
    assert ended.value.code == "conversation-budget"
    assert 40 <= PROBE.counts["bomb"] <= 50


async def test_a_conversation_past_its_deadline_is_ended_and_its_handler_cancelled(start):
    pump = await start(organism(HANG, ECHO, limits={"conversation_timeout_s": 0.5}))
    async with pump.client("tester") as client:
        started = time.monotonic()
        with pytest.raises(RemoteError) as ended:
            await client.ask(Hang(tag="slow"), to="hang", timeout=HANG_GUARD)
        assert ended.value.code == "conversation-timeout"
        assert time.monotonic() - started < 5  # deadline 0.5 s, checked once a second
        await settle(pump)
    assert PROBE.counts["hang-cancelled"] == 1
    assert pump.counters.errored["conversation-timeout"] == 1  # the cancelled handler's unit
    assert pump.counters.listener("hang").running == 0


async def test_cancelling_a_conversation_stops_its_handlers_and_tells_its_client(start):
    pump = await start(organism(HANG, ECHO))
    async with pump.client("tester") as client:
        ask = asyncio.create_task(client.ask(Hang(tag="a"), to="hang", timeout=HANG_GUARD))
        await PROBE.event("hang-a").wait()
        other = await client.send(Hang(tag="b"), to="hang")
        await PROBE.event("hang-b").wait()
        (thread_id,) = [t for t in client._waiters]  # the ask's thread id
        assert await client.cancel(thread_id) is True
        with pytest.raises(RemoteError) as cancelled:
            await ask
        assert cancelled.value.code == "cancelled"
        assert await client.cancel(thread_id) is False  # nothing left to cancel
        assert PROBE.counts["hang-cancelled"] == 1  # only that conversation's handler
        PROBE.event("release").set()
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert frame.thread_id == other and frame.payload.text == "released b"
        await settle(pump)
    assert pump.counters.errored["cancelled"] == 1


async def test_a_cancelled_conversation_takes_no_more_messages(start):
    pump = await start(organism(HANG, ECHO))
    async with pump.client("tester") as client:
        thread_id = await client.send(Hang(tag="a"), to="hang")
        await PROBE.event("hang-a").wait()
        assert await client.cancel(thread_id)
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert frame.payload.code == "cancelled"
        await client.send(Echo(text="late"), to="echo", thread_id=thread_id)  # same thread id: a new conversation
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert frame.payload.text == "late"
