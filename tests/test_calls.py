"""Awaiting a peer in straight-line code: `meta.ask` (DESIGN §11)."""

import asyncio
import time
import uuid

import pytest

from agentserver import SystemError
from agentserver import PeerError
from tests.ask_organisms import Link, Summary, Task
from tests.organisms import PROBE
from tests.support import HANG_GUARD, assert_counters, make_pump, organism, settle


def ask_listener(name: str, kind: str, handler: str, **extra) -> dict:
    return {"name": name, "payload_class": f"tests.ask_organisms.{kind}", "handler": f"tests.ask_organisms.{handler}", **extra}


CALCULATOR = ask_listener("calculator", "Add", "calculator")
WEATHER = ask_listener("weather", "City", "weather")
PLANNER = ask_listener("planner", "Task", "planner", agent=True, peers=["calculator", "weather"])
TRIP = organism(PLANNER, CALCULATOR, WEATHER)


async def test_a_planner_gathers_two_peers_and_answers_its_caller(start):
    pump = await start(TRIP)
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=2, b=3, city="Oslo"), to="planner", timeout=HANG_GUARD)
    assert reply.payload == Summary(total=5, weather="sunny in Oslo")
    # one handler call: the answers resumed it instead of arriving as new calls
    assert PROBE.counts["planner"] == 1
    assert pump.counters.listener("planner").delivered == 1
    assert len(pump.calls) == 0 and pump.stores.threads.conversations == 0


async def test_the_waiting_handler_sees_the_answers_in_its_history_with_ids(start):
    pump = await start(TRIP)
    async with pump.client("tester") as client:
        before = time.time()
        await client.ask(Task(a=2, b=3, city="Oslo"), to="planner", timeout=HANG_GUARD)
    history = PROBE.notes["planner_history"]
    (task,) = [e for e in history if e.root_tag == "Task"]
    assert task.sender == "tester" and task.to == "planner"
    for entry in history:
        assert entry.timestamp >= before - 1 and uuid.UUID(entry.message_id).version == 4
        assert uuid.UUID(entry.call_id)


async def test_a_peer_that_raises_gives_a_peer_error_naming_the_peer_and_the_call(start):
    pump = await start(TRIP)
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=1, b=1, city="crash"), to="planner", timeout=HANG_GUARD)
    assert reply.payload.weather == "handler from weather"
    error = PROBE.notes["peer_error"]
    assert (error.code, error.peer) == ("handler", "weather")
    assert error.call_id == PROBE.notes["weather_call"]  # the weather handler answered this call
    assert pump.counters.errored["handler"] == 1


async def test_a_timeout_raises_timeout_error_and_the_late_answer_is_dropped_and_counted(start):
    pump = await start(TRIP)
    PROBE.notes.update(weather_timeout=0.1, weather_seconds=0.5)
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=1, b=1, city="slow"), to="planner", timeout=HANG_GUARD)
        assert reply.payload.weather == "timeout"
        await settle(pump)  # the slow forecast arrives after its asker stopped waiting
    assert pump.counters.errored["late"] == 1
    assert PROBE.counts["planner"] == 1  # never delivered as a new call
    assert pump.dead_letters.recent()[-1].code == "late"


async def test_a_branch_that_ends_without_an_answer_raises_no_answer(start):
    pump = await start(TRIP)
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=1, b=1, city="silent"), to="planner", timeout=HANG_GUARD)
    assert reply.payload.weather == "no-answer from weather"


async def test_a_second_respond_to_the_same_call_is_dropped_and_counted_late(start):
    pump = await start(TRIP)
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=1, b=1, city="twice"), to="planner", timeout=HANG_GUARD)
        await settle(pump)
    assert reply.payload.weather == "first"
    assert pump.counters.errored["late"] == 1


async def test_asking_a_listener_that_is_no_peer_is_a_routing_error_and_the_thread_lives_on(start):
    pump = await start(organism(ask_listener("prober", "Task", "prober", agent=True, peers=["calculator"]),
                                CALCULATOR, WEATHER))
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=4, b=5, city="x"), to="prober", timeout=HANG_GUARD)
    assert (PROBE.notes["peer_error"].code, PROBE.notes["peer_error"].peer) == ("routing", "weather")
    assert reply.payload.total == 9  # the same handler call went on and asked its real peer
    assert PROBE.counts["weather"] == 0


@pytest.mark.parametrize("concurrency", [{}, {"concurrency": 1}])
async def test_a_chain_that_comes_back_to_the_first_listener_completes_with_one_handler_slot(start, concurrency):
    links = [ask_listener("link_a", "Link", "link_a", peers=["link_b"], **concurrency),
             ask_listener("link_b", "Link", "link_b", peers=["link_c"]),
             ask_listener("link_c", "Link", "link_c", peers=["link_a"])]
    pump = await start(organism(*links, max_concurrent_handlers=1))
    async with pump.client("tester") as client:
        reply = await client.ask(Link(path="start"), to="link_a", timeout=HANG_GUARD)
    assert reply.payload.path == "start>link_a>link_b>link_c>link_a!<link_c<link_b<link_a"
    assert pump.slots.busy == 0


async def test_the_listener_cap_still_bounds_how_many_run_while_others_wait(start):
    pump = await start(organism(PLANNER, CALCULATOR, ask_listener("weather", "City", "weather", concurrency=2)))
    async with pump.client("tester") as client:
        asks = [asyncio.create_task(client.ask(Task(a=n, b=0, city="slow"), to="planner", timeout=HANG_GUARD))
                for n in range(6)]
        await PROBE.event("never").wait() if False else await asyncio.sleep(0.1)
        assert pump.counters.listener("weather").running <= 2
        assert pump.counters.listener("planner").running == 0  # all six wait, holding no slot
        replies = await asyncio.gather(*asks)
    assert sorted(r.payload.total for r in replies) == list(range(6))


async def test_the_returning_style_names_the_failed_call_and_peer_in_its_system_error(start):
    pump = await start(organism(ask_listener("coordinator", "Task", "coordinator", agent=True,
                                             peers=["calculator", "weather"]), CALCULATOR, WEATHER))
    async with pump.client("tester") as client:
        reply = await client.ask(Task(a=1, b=2, city="crash"), to="coordinator", timeout=HANG_GUARD)
    assert reply.payload == Summary(total=1, weather="weather")
    (error,) = [p for p in PROBE.notes["coordinator_got"] if isinstance(p, SystemError)]
    assert (error.code, error.peer, error.call_id) == ("handler", "weather", PROBE.notes["weather_call"])


async def test_shutdown_while_handlers_wait_ends_every_unit_exactly_once():
    pump = make_pump(TRIP)
    async with pump:
        async with pump.client("tester") as client:
            for n in range(5):
                await client.send(Task(a=n, b=n, city="hang"), to="planner")
            await PROBE.event("weather-hangs").wait()
            await asyncio.sleep(0.05)
            report = await pump.shutdown(0.2)
    assert not report.clean and report.dropped >= 10  # five waiting planners, five hanging forecasts
    assert len(pump.calls) == 0
    assert_counters(pump)


async def test_calls_made_at_once_give_the_slot_back_once_and_the_cap_holds(start):
    # two asks in flight from one handler must not free its slot twice (the count went negative)
    pump = await start(organism(ask_listener("planner", "Task", "planner", agent=True, peers=["calculator", "weather"],
                                             concurrency=1), CALCULATOR, WEATHER))
    PROBE.notes["weather_seconds"] = 0.2
    async with pump.client("tester") as client:
        asks = [asyncio.create_task(client.ask(Task(a=n, b=0, city="slow"), to="planner", timeout=HANG_GUARD))
                for n in range(4)]
        peak = 0
        while not all(ask.done() for ask in asks):
            stats = pump.counters.listener("planner")
            assert stats.running >= 0 and pump.slots.busy >= 0
            peak = max(peak, stats.running)
            await asyncio.sleep(0.005)
        replies = [ask.result() for ask in asks]
    assert sorted(r.payload.total for r in replies) == [0, 1, 2, 3]
    assert peak <= 1 and pump.slots.busy == 0
