"""Threads: opaque ids for positions in a conversation's call tree; bounded under traffic."""

import asyncio

from agentserver.message_bus.thread_registry import ThreadRegistry
from tests.organisms import PROBE, Ball, Echo, Order, Req
from tests.support import HANG_GUARD, listener, organism, settle


def test_chains_grow_by_call_and_respond_goes_to_the_parent():
    registry = ThreadRegistry()
    root = registry.open("client", "ext-1")
    a = registry.extend(root, "agent.alpha")  # names may contain dots
    b = registry.extend(a, "tool.v2.beta")
    assert (root.chain, a.chain, b.chain) == (("client",), ("client", "agent.alpha"), ("client", "agent.alpha", "tool.v2.beta"))
    assert (b.owner, b.caller) == ("tool.v2.beta", "agent.alpha")
    assert registry.prune(b) is a and registry.prune(a) is root and registry.prune(root) is None
    assert registry.get(b.id) is b and len({root.id, a.id, b.id}) == 3


def test_two_conversations_over_the_same_path_never_share_a_thread():
    registry = ThreadRegistry()
    one = registry.extend(registry.open("client", "x"), "agent")
    two = registry.extend(registry.open("client", "y"), "agent")
    assert one.chain == two.chain
    assert one.id != two.id and one.conversation is not two.conversation
    # the same client thread id continues the same conversation
    assert registry.open("client", "x") is one.parent
    # another client may use the same id for its own conversation
    assert registry.open("other", "x") is not one.parent


def test_a_conversation_is_over_when_its_last_unit_ends_and_forgetting_drops_its_threads():
    registry = ThreadRegistry()
    root = registry.open("client", "x")
    child = registry.extend(root, "agent")
    conversation = root.conversation
    conversation.hold()
    conversation.hold()
    assert conversation.release() is False
    assert registry.get(child.id) is child
    assert conversation.release() is True  # the last unit: the owner forgets it now
    forgotten = registry.forget(conversation)
    assert registry.get(child.id) is None and registry.get(root.id) is None
    assert sorted(forgotten) == sorted([root.id, child.id])
    assert (len(registry), registry.conversations) == (0, 0)
    assert registry.open("client", "x") is not root  # the id starts a new conversation


def test_idle_conversations_are_forgotten_oldest_first():
    registry = ThreadRegistry()
    old = registry.open("client", "old", now=0.0)
    busy = registry.open("client", "busy", now=10.0)
    fresh = registry.open("client", "fresh", now=50.0)
    registry.touch(busy.conversation, 60.0)  # activity keeps a conversation alive

    def forget_idle(now: float) -> int:
        idle = registry.idle_conversations(now, 60.0)
        for conversation in idle:
            registry.forget(conversation)
        return len(idle)

    assert forget_idle(now=100.0) == 1  # old: idle for 100 s
    assert registry.get(old.id) is None
    assert registry.get(busy.id) is busy and registry.get(fresh.id) is fresh
    assert forget_idle(now=100.0) == 0
    assert forget_idle(now=115.0) == 1  # fresh (idle 65 s); busy idle 55 s
    assert registry.get(busy.id) is busy and registry.conversations == 1


def test_a_conversation_forgotten_as_idle_still_cleans_up_when_it_finishes():
    registry = ThreadRegistry()
    root = registry.open("client", "x", now=0.0)
    root.conversation.hold()  # a unit still out (a slow handler)
    (idle,) = registry.idle_conversations(now=100.0, idle_s=10.0)
    registry.forget(idle)
    late = registry.extend(root, "agent")  # the slow handler finally calls someone
    assert root.conversation.release() is True
    forgotten = registry.forget(root.conversation)
    assert registry.get(late.id) is None and len(registry) == 0
    assert late.id in forgotten and registry.forgotten == 1


async def test_concurrent_conversations_over_the_same_path_keep_their_own_threads_and_history(start):
    pump = await start(organism(listener("front", "Req", "front"), listener("back", "Job", "back")))
    PROBE.notes["back_wait"] = 2  # back answers only once both conversations are inside it
    async with pump.client("tester") as client:
        one, two = await asyncio.gather(
            client.ask(Req(token="one"), to="front", timeout=HANG_GUARD),
            client.ask(Req(token="two"), to="front", timeout=HANG_GUARD),
        )
    assert (one.payload.text, two.payload.text) == ("one", "two")
    assert one.thread_id != two.thread_id
    fronts = {seen.payload.token: seen for seen in PROBE.of("front") if type(seen.payload).__name__ == "JobDone"}
    backs = {seen.payload.token: seen for seen in PROBE.of("back")}
    # same path (tester -> front -> back), separate threads
    assert fronts["one"].meta.thread_id != fronts["two"].meta.thread_id
    assert backs["one"].meta.thread_id != backs["two"].meta.thread_id
    # each history holds its own conversation only
    for token, other in (("one", "two"), ("two", "one")):
        history = fronts[token].meta.history
        assert [(entry.sender, entry.to, entry.root_tag) for entry in history] == [
            ("tester", "front", "Req"),
            ("back", "front", "JobDone"),
        ]
        assert [entry.payload.token for entry in history] == [token, token]
        back_history = backs[token].meta.history
        assert [(entry.sender, entry.root_tag, entry.payload.token) for entry in back_history] == [("front", "Job", token)]
        assert all(entry.payload.token != other for entry in history + back_history)
    assert pump.stores.threads.conversations == 0 and len(pump.stores.history) == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_long_but_busy_conversation_is_not_forgotten_as_idle(start):
    pump = await start(
        organism(
            listener("ping", "Ball", "ping"),
            listener("pong", "Ball", "pong"),
            listener("echo", "Echo", "echo"),
            listener("relay", "Order", "relay"),
            limits={"thread_idle_s": 10},
        )
    )
    clock = pump.ctx.clock = PROBE.notes["clock"] = FakeClock()
    PROBE.notes["hop_seconds"] = 4.0  # every hop 4 s after the last
    async with pump.client("tester") as client:
        await client.send(Ball(n=0, limit=40), to="ping")
        await PROBE.event("rally-done").wait()
        await settle(pump)
        assert clock.now == 4.0 * 41  # n = 0..40: busy for 164 s, never idle for 10
        # an idle conversation is still forgotten: one left hanging for a minute
        await client.send(Order(action="hang", arg="gate"), to="relay")
        await PROBE.event("gate-started").wait()
        clock.now += 60.0
        await client.ask(Echo(text="sweep"), to="echo", timeout=HANG_GUARD)
        assert pump.stores.threads.conversations == 0  # the hanging one was forgotten as idle
        PROBE.event("gate").set()
        await settle(pump)
    assert PROBE.counts["rally"] == 40
    # nothing of the long conversation was forgotten early and left behind
    assert (len(pump.stores.threads), pump.stores.threads.conversations, len(pump.stores.history), len(pump.stores.todos)) == (0, 0, 0, 0)
