"""Step 5, thread assignment: conversations, and who an external sender may claim to be."""

import pytest

from agentserver.message_bus.message_state import Origin
from agentserver.message_bus.steps import assign_thread
from tests.organisms import PROBE, Echo
from tests.support import envelope, exchange, listener, new_thread, organism, pump_for, run_steps, settle

ECHO = listener("echo", "Echo", "echo")
PAYLOAD = "<Echo><Text>x</Text></Echo>"


def test_a_client_thread_id_opens_a_conversation_and_continues_it():
    pump = pump_for(ECHO)
    thread_id = new_thread()
    (first,) = run_steps(pump, envelope(PAYLOAD, to="echo", thread=thread_id), upto=assign_thread)
    (second,) = run_steps(pump, envelope(PAYLOAD, to="echo", thread=thread_id), upto=assign_thread)
    (other,) = run_steps(pump, envelope(PAYLOAD, to="echo"), upto=assign_thread)
    assert first.error is None and first.thread.chain == ("tester",)
    assert first.thread.conversation.external_id == thread_id
    assert second.thread is first.thread
    assert other.thread is not first.thread and other.thread.conversation is not first.thread.conversation
    # the pump's own thread ids are not the client's
    assert first.thread.id != thread_id


@pytest.mark.parametrize("sender", ["echo", "system", "core", "system.boot", "core.anything"])
def test_an_external_sender_may_not_name_a_listener_or_a_reserved_name(sender):
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, envelope(PAYLOAD, sender=sender, to="echo"), origin=Origin.external(None), upto=assign_thread)
    assert state.error is not None
    assert (state.error.code, state.error.step) == ("forbidden-sender", "threads")
    assert state.thread is None and len(pump.stores.threads) == 1  # only the pump's own boot thread


def test_an_external_sender_must_use_its_connection_name():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, envelope(PAYLOAD, sender="mallory", to="echo"), origin=Origin.external("tester"), upto=assign_thread)
    assert state.error.code == "forbidden-sender"


def test_pump_built_messages_must_be_on_a_known_thread():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, envelope(PAYLOAD, sender="echo"), origin=Origin.listener("echo"), upto=assign_thread)
    assert (state.error.code, state.error.step) == ("unknown-thread", "threads")


async def test_pump_refuses_a_client_that_claims_another_name(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        for sender in ("echo", "system", "mallory"):
            frame = await exchange(pump, client, envelope(PAYLOAD, sender=sender, to="echo"))
            assert (frame.kind, frame.code) == ("huh", "forbidden-sender"), sender
        reply = await client.ask(Echo(text="me"), to="echo", timeout=30)
    assert reply.payload.text == "me"
    assert PROBE.counts["echo"] == 1
    assert pump.counters.errored["forbidden-sender"] == 3


async def test_pump_refuses_a_listener_name_even_from_an_unnamed_injector(start):
    pump = await start(organism(ECHO))
    for sender in ("echo", "system"):
        await pump.inject(envelope(PAYLOAD, sender=sender, to="echo"))
    await settle(pump)
    assert PROBE.counts["echo"] == 0
    assert pump.counters.errored["forbidden-sender"] == 2


async def test_pump_keeps_one_conversation_per_client_thread(start):
    pump = await start(organism(ECHO))
    thread_id = new_thread()
    async with pump.client("tester") as client:
        for text in ("one", "two"):
            frame = await exchange(pump, client, envelope(f"<Echo><Text>{text}</Text></Echo>", to="echo", thread=thread_id))
            assert frame.thread_id == thread_id and frame.payload.text == text
    first, second = PROBE.of("echo")
    # each call is delivered on a thread of its own
    assert first.meta.thread_id != second.meta.thread_id
    assert pump.stores.threads.conversations == 0  # finished conversations are forgotten
