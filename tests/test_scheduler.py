"""FairScheduler: round-robin across conversations and clients; and fairness in a running pump."""

import asyncio

from agentserver.message_bus.scheduler import FairScheduler
from tests.organisms import PROBE, Ball, Echo, Spam, Start
from tests.support import HANG_GUARD, listener, organism, settle


def _drain(scheduler):
    out = []
    while (popped := scheduler.pop()) is not None:
        out.append(popped[0])
    return out


def test_keys_are_served_round_robin_one_item_per_turn():
    scheduler = FairScheduler()
    for n in range(5):
        scheduler.push("chatty", f"c{n}")
    scheduler.push("quiet", "q0")
    assert _drain(scheduler) == ["c0", "q0", "c1", "c2", "c3", "c4"]


def test_breadth_first_keeps_a_key_in_order_and_depth_first_takes_the_newest():
    breadth, depth = FairScheduler(), FairScheduler(depth_first=True)
    for scheduler in (breadth, depth):
        for item in ("a1", "a2", "a3"):
            scheduler.push("a", item)
        scheduler.push("b", "b1")
    assert _drain(breadth) == ["a1", "b1", "a2", "a3"]
    assert _drain(depth) == ["a3", "b1", "a2", "a1"]


def test_intake_items_are_counted_and_drain_empties_everything():
    scheduler = FairScheduler()
    scheduler.push("client", "x", intake=True)
    scheduler.push("conversation", "y")
    assert (len(scheduler), scheduler.intake_size) == (2, 1)
    assert scheduler.pop() == ("x", True)
    assert scheduler.intake_size == 0
    scheduler.push("client", "z", intake=True)
    assert sorted(scheduler.drain()) == ["y", "z"]
    assert (len(scheduler), scheduler.intake_size, scheduler.pop()) == (0, 0, None)


SMALL = dict(max_concurrent_pipelines=1, max_concurrent_handlers=1)


async def test_a_flooding_conversation_does_not_starve_a_quiet_one(start):
    total = 300
    pump = await start(
        organism(
            listener("spammer", "Start", "spammer"),
            listener("sink", "Spam", "sink"),
            listener("quiet", "Echo", "quiet"),
            **SMALL,
        )
    )
    async with pump.client("chatty") as chatty, pump.client("tester") as client:
        # one handler call puts `total` messages into one conversation at once
        await chatty.send(Start(count=total), to="spammer")
        await PROBE.event("sink-started").wait()
        reply = await client.ask(Echo(text="hello"), to="quiet", timeout=HANG_GUARD)
        assert reply.payload.text == "quiet hello"
        # served in turn with the flood, not behind it
        assert not PROBE.event("sink-done").is_set()
        assert PROBE.notes["sink_at_quiet"] < total // 2
        await PROBE.event("sink-done").wait()
        await settle(pump)
    assert PROBE.counts["sink"] == total


async def test_a_long_ping_pong_does_not_starve_a_quiet_ask(start):
    limit = 400
    pump = await start(
        organism(
            listener("ping", "Ball", "ping"),
            listener("pong", "Ball", "pong"),
            listener("quiet", "Echo", "quiet"),
            limits={"max_thread_hops": 1000},
            **SMALL,
        )
    )
    async with pump.client("chatty") as chatty, pump.client("tester") as client:
        await chatty.send(Ball(n=0, limit=limit), to="ping")
        await PROBE.event("rally-started").wait()
        reply = await client.ask(Echo(text="between"), to="quiet", timeout=HANG_GUARD)
        assert reply.payload.text == "quiet between"
        assert not PROBE.event("rally-done").is_set()
        assert 5 <= PROBE.notes["rally_at_quiet"] < limit
        await PROBE.event("rally-done").wait()
        await settle(pump)
    assert PROBE.counts["rally"] == limit


async def test_depth_first_scheduling_runs_too(start):
    pump = await start(organism(listener("quiet", "Echo", "quiet"), thread_scheduling="depth-first"))
    async with pump.client("tester") as client:
        reply = await client.ask(Echo(text="deep"), to="quiet", timeout=HANG_GUARD)
    assert reply.payload.text == "quiet deep"


async def test_a_flooding_client_does_not_starve_a_quiet_client(start):
    total = 300
    pump = await start(organism(listener("sink", "Spam", "sink"), listener("quiet", "Echo", "quiet"), **SMALL))
    PROBE.notes["spam_total"] = total
    async with pump.client("flood") as flood, pump.client("tester") as client:
        # all queued before the quiet client asks (send returns on the ack, at dispatch: not awaited here)
        flooding = asyncio.gather(*(flood.send(Spam(n=n), to="sink") for n in range(total)))
        await asyncio.sleep(0)  # each send runs to its ack wait: queued
        reply = await client.ask(Echo(text="me too"), to="quiet", timeout=HANG_GUARD)
        assert reply.payload.text == "quiet me too"
        assert PROBE.notes["sink_at_quiet"] < total // 2
        await PROBE.event("sink-done").wait()
        await flooding
        await settle(pump)
    assert PROBE.counts["sink"] == total
