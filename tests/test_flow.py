"""Flow control: fair intake, fair parking, caps that never block the pipeline (DESIGN §5, §10)."""

import asyncio
import time

import pytest

from agentserver.message_bus.flow import FairSemaphore, HandlerSlots
from agentserver.message_bus.message_state import MessageState, Origin
from tests.hardening_organisms import Hang, Work
from tests.organisms import PROBE, Echo
from tests.support import HANG_GUARD, assert_counters, envelope, listener, make_pump, organism, pump_for, settle


def _hardening(name: str, kind: str, handler: str, **extra):
    entry = listener(name, kind, handler, **extra)
    entry["payload_class"] = f"tests.hardening_organisms.{kind}"
    entry["handler"] = f"tests.hardening_organisms.{handler}"
    return entry


HANG = _hardening("hang", "Hang", "hang")
ECHO = listener("echo", "Echo", "echo")


# ---------------------------------------------------------------------- the pieces
async def test_the_fair_semaphore_serves_waiting_keys_round_robin():
    semaphore = FairSemaphore(1)
    await semaphore.acquire("a")  # taken
    order = []

    async def waiter(key, n):
        await semaphore.acquire(key)
        order.append(f"{key}{n}")

    tasks = [asyncio.create_task(waiter("a", n)) for n in range(3)] + [asyncio.create_task(waiter("b", 0))]
    await asyncio.sleep(0)
    for _ in range(4):
        semaphore.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["a0", "b0", "a1", "a2"]  # b's one waiter does not queue behind all of a's


async def test_a_cancelled_waiter_gives_its_place_on():
    semaphore = FairSemaphore(0)
    first = asyncio.create_task(semaphore.acquire("a"))
    second = asyncio.create_task(semaphore.acquire("b"))
    await asyncio.sleep(0)
    first.cancel()
    semaphore.release()
    await asyncio.wait_for(second, HANG_GUARD)
    assert semaphore.value == 0 and first.cancelled()


def _unit(pump, lane: str, conversation_id: int) -> MessageState:
    state = MessageState(raw=b"", origin=Origin.external(lane))
    state.thread_hint = f"{lane}/{conversation_id}"
    return state


def test_parked_units_of_one_listener_are_served_round_robin_by_client():
    pump = pump_for(listener("echo", "Echo", "echo", concurrency=1))
    slots = HandlerSlots(1, pump.routes, pump.counters)
    assert slots.take("echo", _unit(pump, "a", 0), "a", 0)  # running
    for n in range(1, 4):
        assert not slots.take("echo", _unit(pump, "a", n), "a", n)  # parked
    assert not slots.take("echo", _unit(pump, "b", 0), "b", 0)
    started = []
    for _ in range(4):
        (unit,) = slots.free("echo")
        started.append(unit.thread_hint)
    assert started == ["a/1", "b/0", "a/2", "a/3"]


def test_a_listener_at_its_cap_parks_without_holding_back_another():
    pump = pump_for(listener("echo", "Echo", "echo", concurrency=1), listener("other", "Echo", "echo"))
    slots = HandlerSlots(2, pump.routes, pump.counters)
    assert slots.take("echo", _unit(pump, "a", 0), "a", 0)
    assert not slots.take("echo", _unit(pump, "a", 1), "a", 1)
    assert slots.take("other", _unit(pump, "b", 0), "b", 0)  # a free global slot, its own cap
    assert slots.free("other") == []  # echo is still at its cap: its parked unit waits
    assert [u.thread_hint for u in slots.free("echo")] == ["a/1"]


# ---------------------------------------------------------------------- in a running pump
async def test_one_client_flooding_a_listener_does_not_delay_another_clients_ask(start):
    # before: client A's 5,000 asks to one listener made B's single ask wait 17.8 s
    pump = await start(organism(_hardening("busy", "Work", "busy", concurrency=2)))
    async with pump.client("flood") as flood, pump.client("quiet") as quiet:
        floods = [asyncio.create_task(flood.send(Work(n=n), to="busy")) for n in range(5_000)]
        await asyncio.sleep(0.2)  # the flood is under way: intake full, units parked
        started = time.monotonic()
        reply = await quiet.ask(Work(n=-1), to="busy", timeout=HANG_GUARD)
        waited = time.monotonic() - started
        assert reply.payload.text == "done -1"
        assert waited < 3.0, f"the quiet client waited {waited:.1f}s behind the flood"
        assert sum(task.done() for task in floods) < 5_000  # the flood was still going
        await asyncio.gather(*floods)
        await settle(pump, timeout=120)


async def test_a_hung_plain_listener_cannot_take_every_handler_slot(start):
    # before: 100 messages to a hung listener took all 20 slots; others waited 15 s
    pump = await start(organism(HANG, ECHO))  # defaults: 20 handlers, 10 per plain listener
    async with pump.client("tester") as client:
        for n in range(100):
            await client.send(Hang(tag=str(n)), to="hang")
        await PROBE.event("hang-0").wait()
        reply = await client.ask(Echo(text="through"), to="echo", timeout=2.0)
        assert reply.payload.text == "through"
        assert pump.counters.listener("hang").running == 10
        PROBE.event("release").set()
        await settle(pump)


async def test_a_refusal_is_not_held_up_while_every_handler_slot_is_busy(start):
    # before: with max_concurrent_handlers: 1 held, another client's <huh> waited for it
    pump = await start(organism(HANG, ECHO, max_concurrent_handlers=1))
    async with pump.client("holder") as holder, pump.client("other") as other:
        await holder.send(Hang(tag="x"), to="hang")
        await PROBE.event("hang-x").wait()
        await holder.send(Echo(text="waits for the slot"), to="echo")  # needs the one busy slot
        await pump.inject(b"<not xml", from_id="other")
        frame = await asyncio.wait_for(other.receive(), 2.0)
        assert (frame.kind, frame.code) == ("huh", "malformed")
        assert pump.counters.listener("echo").waiting == 1  # parked, not blocking the pipeline
        PROBE.event("release").set()
        await settle(pump)


async def test_the_handler_cap_is_reached_when_handlers_last(start):
    # with max_concurrent_handlers: 500, 500 handlers that wait all run at once; the
    # 165-250 seen with 10 ms handlers was the pipeline's rate (~80 µs a message), not a cap
    pump = await start(organism(_hardening("hang", "Hang", "hang", concurrency=500), max_concurrent_handlers=500))
    PROBE.notes["hang-expect"] = 500
    async with pump.client("tester") as client:
        for n in range(600):
            await client.send(Hang(tag=str(n)), to="hang")
        await asyncio.wait_for(PROBE.event("hang-all").wait(), HANG_GUARD)
        assert pump.counters.listener("hang").running == 500
        assert pump.counters.listener("hang").waiting == 100
        PROBE.event("release").set()
        await settle(pump)
    assert PROBE.notes["hang-peak"] == 500


async def test_shutdown_under_load_ends_every_unit_exactly_once_and_on_time():
    # before: SIGTERM with four busy clients ended at accepted=3377 handled=3237 errored=128
    pump = make_pump(organism(HANG, ECHO, _hardening("busy", "Work", "busy", concurrency=5),
                              limits={"shutdown_timeout_s": 0.5}))
    async with pump:
        clients = [pump.client(f"c{n}") for n in range(4)]
        for client in clients:
            await client.__aenter__()

        async def flood(client, n):
            for i in range(2_000):
                kind = i % 3
                payload = Hang(tag=f"{n}-{i}") if kind == 0 else Work(n=i) if kind == 1 else Echo(text="x")
                await client.send(payload, to=("hang", "busy", "echo")[kind])

        floods = [asyncio.create_task(flood(client, n)) for n, client in enumerate(clients)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        report = await pump.shutdown()
        took = time.monotonic() - started
        await asyncio.gather(*floods, return_exceptions=True)
        for client in clients:
            await client.__aexit__(None, None, None)
    counters = pump.counters
    assert counters.in_flight == 0
    assert counters.accepted == counters.handled + counters.errored_total
    assert report.dropped > 0 and not report.clean
    assert took < 0.5 + 2 * 2.0 + 1.0, f"shutdown took {took:.1f}s"  # deadline + grace periods + slack
    assert_counters(pump)
