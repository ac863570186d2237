"""Hop events and the log lines made from them: one conversation id everywhere (DESIGN §13)."""

import asyncio
import logging

from tests.ask_organisms import Summary, Task
from tests.organisms import PROBE, Echo
from tests.support import HANG_GUARD, envelope, listener, organism, settle
from tests.test_calls import CALCULATOR, PLANNER, WEATHER


async def test_every_hop_is_an_event_with_the_client_s_conversation_id(start):
    pump = await start(organism(PLANNER, CALCULATOR, WEATHER))
    await settle(pump)  # the boot message: a conversation of its own ("system:1")
    events = []
    pump.events.subscribe(events.append)
    async with pump.client("tester") as client:
        thread_id = await client.send(Task(a=1, b=2, city="Oslo"), to="planner")
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        await settle(pump)
    assert frame.payload == Summary(total=3, weather="sunny in Oslo")
    assert {event.conversation for event in events} == {thread_id}
    hops = [(event.sender, event.to, event.root_tag, event.outcome) for event in events]
    assert ("tester", "planner", "Task", "handled") in hops
    assert ("planner", "calculator", "Add", "handled") in hops and ("calculator", "planner", "Sum", "handled") in hops
    assert ("planner", "tester", "Summary", "handled") in hops  # the reply, delivered to the client
    assert all(event.bytes > 0 and event.duration_s >= 0 and event.message_id for event in events)
    assert PROBE.of("planner")[0].meta.conversation_id == thread_id


async def test_debug_logs_a_line_per_hop_and_info_one_per_finished_conversation(start, caplog):
    caplog.set_level(logging.DEBUG, logger="agentserver")
    pump = await start(organism(listener("echo", "Echo", "echo")))
    async with pump.client("tester") as client:
        thread_id = await client.send(Echo(text="hi"), to="echo")
        await asyncio.wait_for(client.receive(), HANG_GUARD)
        await settle(pump)
    hops = [r.getMessage() for r in caplog.records if r.name == "agentserver.hops"]
    assert any(f"conversation={thread_id} tester -> echo <Echo>" in line and " handled " in line for line in hops), hops
    ended = [r for r in caplog.records if r.levelno == logging.INFO and "conversation" in r.getMessage()
             and thread_id in r.getMessage()]
    assert len(ended) == 1 and "ended" in ended[0].getMessage() and "2 units" in ended[0].getMessage()


async def test_a_refusal_names_the_client_s_conversation_in_the_log_and_the_dead_letter(start, caplog):
    caplog.set_level(logging.WARNING, logger="agentserver.pump")
    pump = await start(organism(listener("echo", "Echo", "echo")))
    async with pump.client("tester") as client:
        thread = "11111111-2222-4333-8444-555555555555"
        await pump.inject(envelope("<Echo><Txt>x</Txt></Echo>", to="echo", thread=thread), from_id="tester")
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
    assert (frame.code, frame.thread_id) == ("invalid-payload", thread)
    (letter,) = pump.dead_letters.recent()
    assert letter.conversation == thread
    assert letter.as_dict()["time"].endswith("+00:00") and "T" in letter.as_dict()["time"]  # ISO-8601
    assert any(f"conversation={thread}" in r.getMessage() for r in caplog.records)


async def test_a_handler_crash_is_logged_in_its_own_words_with_its_traceback(start, caplog):
    caplog.set_level(logging.WARNING, logger="agentserver.pump")
    pump = await start(organism(PLANNER, CALCULATOR, WEATHER))
    async with pump.client("tester") as client:
        await client.ask(Task(a=1, b=1, city="crash"), to="planner", timeout=HANG_GUARD)
    (record,) = [r for r in caplog.records if "handler crashed" in r.getMessage()]
    assert record.levelno == logging.ERROR and "weather raised" in record.getMessage()
    assert record.exc_info is not None and "no weather today" in str(record.exc_info[1])


async def test_an_observer_that_raises_is_removed_and_the_pump_goes_on(start, caplog):
    pump = await start(organism(listener("echo", "Echo", "echo")))

    def broken(event):
        raise RuntimeError("observer bug")

    pump.events.subscribe(broken)
    async with pump.client("tester") as client:
        for _ in range(3):
            await client.ask(Echo(text="x"), to="echo", timeout=HANG_GUARD)
    assert sum("observer" in r.getMessage() for r in caplog.records) == 1
