"""The pump end to end: chains, concurrency limits, fairness, memory, independence."""

import asyncio

import pytest

from agentserver import PumpClosed
from tests.organisms import PROBE, Echo, Gated, Hop, Item, Order, Task
from tests.support import HANG_GUARD, assert_counters, listener, organism, settle

ECHO = listener("echo", "Echo", "echo")
CHAIN = [
    listener("chain_a", "Hop", "chain_a"),
    listener("chain_b", "Hop", "chain_b"),
    listener("chain_c", "Hop", "chain_c"),
]


async def test_a_three_hop_chain_answers_the_client(start):
    pump = await start(organism(*CHAIN))
    async with pump.client("tester") as client:
        reply = await client.ask(Hop(trail="start"), to="chain_a", timeout=HANG_GUARD)
    # out through a, b, c and back through b and a
    assert reply.payload == Hop(trail="start>chain_a>chain_b<chain_c<chain_b<chain_a")
    assert reply.sender == "chain_a"
    calls = [(seen.listener, seen.meta.from_id) for seen in PROBE.seen]
    assert calls == [
        ("chain_a", "tester"),
        ("chain_b", "chain_a"),
        ("chain_c", "chain_b"),
        ("chain_b", "chain_c"),
        ("chain_a", "chain_b"),
    ]
    # a respond() comes back on the thread the caller made the call from
    a_out, b_out, _, b_back, a_back = PROBE.seen
    assert a_out.meta.thread_id == a_back.meta.thread_id
    assert b_out.meta.thread_id == b_back.meta.thread_id
    assert len({a_out.meta.thread_id, b_out.meta.thread_id, PROBE.seen[2].meta.thread_id}) == 3
    assert pump.stores.threads.conversations == 0


async def test_a_listener_at_its_cap_does_not_delay_another_listener(start):
    # the gated listener takes one message at a time and its backlog is larger than the
    # number of envelopes the pipeline admits at once
    pump = await start(
        organism(
            listener("gated", "Gated", "gated", concurrency=1),
            ECHO,
            max_concurrent_pipelines=3,
            max_concurrent_handlers=3,
        )
    )
    async with pump.client("tester") as client:
        for n in range(8):
            await client.send(Gated(n=n), to="gated")
        await PROBE.event("gated-started").wait()
        reply = await client.ask(Echo(text="not held back"), to="echo", timeout=HANG_GUARD)
        assert reply.payload.text == "not held back"
        # ... while the gated listener still sits on its first message with the rest waiting
        assert PROBE.counts["gated-done"] == 0
        stats = pump.counters.listener("gated")
        assert (stats.running, stats.delivered) == (1, 1)
        PROBE.event("open").set()
        await settle(pump)
    assert PROBE.counts["gated-done"] == 8
    assert PROBE.notes["gated-peak"] == 1  # the cap held


async def test_a_backlog_for_a_busy_listener_still_fills_the_bounded_intake(start):
    pump = await start(organism(listener("gated", "Gated", "gated", concurrency=1), limits={"intake_capacity": 2}))
    async with pump.client("tester") as client:
        await client.send(Gated(n=0), to="gated")
        await PROBE.event("gated-started").wait()  # its handler started: its intake place is free
        await client.send(Gated(n=1), to="gated")  # parked, holding an intake place
        await client.send(Gated(n=2), to="gated")  # parked, holding the other
        third = asyncio.create_task(client.send(Gated(n=3), to="gated"))
        third.add_done_callback(lambda _: PROBE.notes.setdefault("done_when_sent", PROBE.counts["gated-done"]))
        await asyncio.sleep(0)  # one turn of the loop: an unbounded intake would take it now
        assert not third.done()
        PROBE.event("open").set()
        await asyncio.wait_for(third, HANG_GUARD)
        await settle(pump)
    assert PROBE.notes["done_when_sent"] >= 1  # it got in only once the first handler finished
    assert PROBE.counts["gated-done"] == 4


async def test_shutdown_lets_a_running_handler_finish_and_counts_its_reply(start):
    pump = await start(organism(listener("relay", "Order", "relay")))
    async with pump.client("tester") as client:
        thread_id = await client.send(Order(action="hang", arg="gate"), to="relay")
        await PROBE.event("gate-started").wait()
        stopping = asyncio.create_task(pump.shutdown(HANG_GUARD))
        await asyncio.sleep(0)  # one turn: shutdown has closed the intake and is waiting
        with pytest.raises(PumpClosed):
            await client.send(Order(action="forward", arg="nobody"), to="relay")
        assert not stopping.done()
        PROBE.event("gate").set()  # the handler finishes during the shutdown
        report = await asyncio.wait_for(stopping, HANG_GUARD)
        reply = await asyncio.wait_for(client.receive(), HANG_GUARD)
    assert (report.clean, report.dropped) == (True, 0)
    assert reply.thread_id == thread_id and reply.payload.text == "released gate"
    assert pump.counters.listener("relay").handled == 1
    assert report.handled == pump.counters.handled == pump.counters.accepted  # boot, order, reply
    assert "cancelled" not in PROBE.notes


async def test_shutdown_cancels_a_handler_that_never_ends_and_reports_it_dropped(start):
    pump = await start(organism(listener("relay", "Order", "relay"), listener("gated", "Gated", "gated", concurrency=1)))
    async with pump.client("tester") as client:
        await client.send(Order(action="hang", arg="never"), to="relay")
        await client.send(Gated(n=1), to="gated")
        await client.send(Gated(n=2), to="gated")  # parked behind the first: never starts
        await PROBE.event("never-started").wait()
        await PROBE.event("gated-started").wait()
        report = await pump.shutdown(0.2)
    assert not report.clean
    assert report.dropped == 3  # two cancelled handlers, one message that never started
    assert PROBE.notes["cancelled"] == "never"
    assert pump.counters.errored == {"shutdown": 3}
    assert pump.counters.listener("relay").errored == 1
    assert pump.closed
    assert_counters(pump)


async def test_ten_thousand_finished_conversations_leave_the_registries_empty(start):
    pump = await start(organism(listener("sweeper", "Item", "sweeper")))
    async with pump.client("tester") as client:
        for n in range(10_000):
            await client.send(Item(n=n), to="sweeper")
        await settle(pump, timeout=120)
    status = pump.status()
    assert pump.counters.listener("sweeper").handled == 10_000
    assert pump.counters.errored_total == 0
    # each conversation left a thread, a history and a todo watcher behind while it ran
    registries = status["registries"]
    assert (registries["threads"], status["conversations"]["open"], registries["context_threads"], registries["todos"]) == (0, 0, 0, 0)
    assert pump.stores.history.entries == 0 and pump.stores.threads.forgotten == 10_001  # and the boot conversation
    assert pump.dead_letters.total == 0


async def test_two_pumps_in_one_process_are_independent(start):
    text = organism(*CHAIN, ECHO)
    first, second = await start(text), await start(text)
    async with first.client("tester") as one, second.client("tester") as two:
        reply_one, reply_two = await asyncio.gather(
            one.ask(Hop(trail="1"), to="chain_a", timeout=HANG_GUARD),
            two.ask(Echo(text="2"), to="echo", timeout=HANG_GUARD),
        )
    assert reply_one.payload.trail.endswith("<chain_a") and reply_two.payload.text == "2"
    # each pump counted only its own traffic
    assert first.counters.listener("chain_a").delivered == 2 and first.counters.listener("echo").delivered == 0
    assert second.counters.listener("chain_a").delivered == 0 and second.counters.listener("echo").delivered == 1
    assert first.counters.accepted != second.counters.accepted
    # nothing shared: registries, buffers, routing tables, parsers
    for attribute in ("threads", "history", "todos"):
        assert getattr(first.stores, attribute) is not getattr(second.stores, attribute)
    for attribute in ("stores", "dead_letters", "routes", "counters", "ctx", "pipeline", "admission", "slots", "mailboxes"):
        assert getattr(first, attribute) is not getattr(second, attribute)
    assert first.ctx.xml is not second.ctx.xml and first.routes.payload_types is not second.routes.payload_types


async def test_a_message_to_one_pump_never_reaches_the_other(start):
    text = organism(ECHO)
    first, second = await start(text), await start(text)
    frames = []
    second.mailboxes.attach("tester", lambda frame: frames.append(frame) or True)  # same client name on both
    async with first.client("tester") as one:
        await one.ask(Echo(text="only first"), to="echo", timeout=HANG_GUARD)
    await settle(first)
    await settle(second)
    assert [seen.payload.text for seen in PROBE.of("echo")] == ["only first"]
    assert second.counters.listener("echo").delivered == 0 and frames == []
    assert second.counters.accepted == 1  # its own boot message only


async def test_an_agent_may_call_itself_on_its_own_thread(start):
    pump = await start(organism(listener("selfie", "Task", "selfie", agent=True)))
    async with pump.client("tester") as client:
        reply = await client.ask(Task(goal="start"), to="selfie", timeout=HANG_GUARD)
    assert reply.payload.text == "again self=True"
    first, second = PROBE.of("selfie")
    assert (first.meta.is_self_call, second.meta.is_self_call) == (False, True)
    assert first.meta.thread_id == second.meta.thread_id and second.meta.from_id == "selfie"


async def test_the_boot_message_reaches_listeners_of_boot(start):
    pump = await start(organism({**listener("watcher", "Boot", "boot_watcher"), "payload_class": "agentserver.primitives.Boot"}))
    await asyncio.wait_for(PROBE.event("booted").wait(), HANG_GUARD)
    (seen,) = PROBE.of("boot_watcher")
    assert (seen.payload.organism_name, seen.payload.listener_count, seen.meta.from_id) == ("test-organism", 1, "system")
    await settle(pump)
    assert pump.counters.listener("system.boot").handled == 1
