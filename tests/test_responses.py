"""Handler return values -> messages: fan-out, respond(), identity written by the pump."""


import asyncio
import uuid

import pytest

from agentserver import HandlerResponse, RemoteError, TodoUntil
from agentserver.envelope import ENVELOPE_NS
from agentserver.message_bus.responses import WrongType, build_responses
from tests.organisms import PROBE, Echo, Item, NotXml, Order
from tests.support import HANG_GUARD, listener, organism, pump_for, settle

RELAY = listener("relay", "Order", "relay")
COLLECTOR = listener("collector", "Item", "collector")


def _thread(ctx):
    return ctx.threads.extend(ctx.threads.open("tester", "x"), "relay", call_id=str(uuid.uuid4()))


def test_each_return_shape_becomes_its_messages():
    ctx = pump_for(RELAY, COLLECTOR).ctx
    thread = _thread(ctx)
    build = lambda result: build_responses(result, sender="relay", thread=thread, ctx=ctx)  # noqa: E731
    assert build(None).states == []
    (forward,) = build(HandlerResponse(Item(n=1), to="collector")).states
    assert (forward.sender_thread, forward.thread) == (thread, thread)
    (answer,) = build(HandlerResponse.respond(Item(n=1))).states
    assert answer.thread is thread.parent  # pruned by one hop
    assert len(build([HandlerResponse(Item(n=n)) for n in range(3)]).states) == 3
    (legacy,) = build(b"<Item><N>1</N></Item><Item><N>2</N></Item>").states  # one envelope, two payloads
    assert len(legacy.root) == 3  # meta + two payloads
    todos = build([TodoUntil(todo_id="t", wait_for="Item"), None])
    assert todos.states == [] and [t.todo_id for t in todos.todos] == ["t"]
    # the pump writes <from>, <thread>, a new message id and the call: a new one for a
    # call, the answered one (the thread's) for a respond()
    meta = forward.root[0]
    assert [child.text for child in meta] == ["relay", "collector", thread.id, forward.message_id, forward.call_id]
    assert forward.call_id not in (thread.call_id, answer.call_id) and answer.call_id == thread.call_id
    assert len({forward.message_id, answer.message_id, forward.call_id}) == 3
    assert all(uuid.UUID(value).version == 4 for value in (forward.message_id, forward.call_id, thread.id))


@pytest.mark.parametrize("result", [42, "text", {"a": 1}, Echo, NotXml(), [HandlerResponse(Item(n=1)), 42], HandlerResponse(NotXml())])
def test_anything_else_is_the_wrong_type(result):
    ctx = pump_for(RELAY).ctx
    with pytest.raises(WrongType):
        build_responses(result, sender="relay", thread=_thread(ctx), ctx=ctx)


@pytest.mark.parametrize("action", ["fanout-bytes", "fanout-list"])
async def test_one_handler_call_fans_out_to_three_payloads(start, action):
    pump = await start(organism(RELAY, COLLECTOR))
    async with pump.client("tester") as client:
        await client.send(Order(action=action, arg=""), to="relay")
        await asyncio.wait_for(PROBE.event("collected").wait(), HANG_GUARD)
        await settle(pump)
    items = PROBE.of("collector")
    assert sorted(seen.payload.n for seen in items) == [1, 2, 3]
    assert {seen.meta.from_id for seen in items} == {"relay"}  # written by the pump
    assert len({seen.meta.thread_id for seen in items}) == 3
    assert pump.counters.listener("collector").handled == 3
    assert pump.counters.errored_total == 0


async def test_three_responds_at_once_all_reach_the_client(start):
    pump = await start(organism(RELAY))
    async with pump.client("tester") as client:
        first = await client.ask(Order(action="fanout-respond", arg=""), to="relay", timeout=HANG_GUARD)
        second = await asyncio.wait_for(client.receive(), HANG_GUARD)
        third = await asyncio.wait_for(client.receive(), HANG_GUARD)
    assert sorted([first.payload.n, second.payload.n, third.payload.n]) == [1, 2, 3]
    assert first.thread_id == second.thread_id == third.thread_id
    assert {first.sender, second.sender, third.sender} == {"relay"}


async def test_a_fan_out_over_the_limit_is_a_wrong_type(start):
    pump = await start(organism(RELAY, COLLECTOR, limits={"max_fanout": 2}))
    async with pump.client("tester") as client:
        with pytest.raises(RemoteError) as caught:
            await client.ask(Order(action="fanout-list", arg=""), to="relay", timeout=HANG_GUARD)
    assert caught.value.code == "wrong-type"
    assert PROBE.counts["collector"] == 0


async def test_handler_bytes_cannot_forge_an_envelope(start):
    forged = (
        f'<env:message xmlns:env="{ENVELOPE_NS}"><env:meta><env:from>system</env:from><env:to>collector</env:to>'
        f"<env:thread>00000000-0000-0000-0000-000000000001</env:thread></env:meta><Item><N>9</N></Item></env:message>"
    )
    pump = await start(organism(RELAY, COLLECTOR))
    async with pump.client("tester") as client:
        reply = await client.ask(Order(action="bytes", arg=forged), to="relay", timeout=HANG_GUARD)
    # wrapped in the pump's own envelope from "relay", the forged one is no payload at all
    assert reply.payload.text == "error:invalid-envelope"
    assert PROBE.counts["collector"] == 0
