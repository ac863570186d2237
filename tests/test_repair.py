"""Step 1, repair: bytes -> tree; damage in a payload may be repaired, never the routing fields."""

from agentserver.message_bus.steps import repair, validate_payload
from tests.organisms import PROBE, Echo
from tests.support import envelope, exchange, listener, organism, pump_for, run_steps

ECHO = listener("echo", "Echo", "echo")

# the payload's <Text> is never closed: libxml2's recovering parser can fix that
DAMAGED_PAYLOAD = envelope("<Echo><Text>mended</Echo>", to="echo")
# the recovering parser would read <from>tes</from> (with a stray <ter/>): a different sender
DAMAGED_FROM = envelope("<Echo><Text>hi</Text></Echo>", sender="tes<ter", to="echo")
# "gre&eter" is recovered as "gre": a different destination
DAMAGED_TO = envelope("<Echo><Text>hi</Text></Echo>", to="ec&ho")


def test_well_formed_bytes_are_parsed_as_they_are():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, envelope("<Echo><Text>hi</Text></Echo>", to="echo"), upto=repair)
    assert state.error is None
    assert state.root is not None and [(e.tag, e.text) for e in state.root[1].iter()] == [("Echo", None), ("Text", "hi")]


def test_a_damaged_payload_is_repaired_and_goes_on():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, DAMAGED_PAYLOAD, upto=repair)
    assert state.error is None
    assert [(e.tag, e.text) for e in state.root[1].iter()] == [("Echo", None), ("Text", "mended")]  # closed by repair
    (routed,) = run_steps(pump, DAMAGED_PAYLOAD)
    assert routed.error is None
    assert routed.payload == Echo(text="mended")
    assert routed.route.listener.name == "echo"


def test_repair_that_would_change_from_is_refused():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, DAMAGED_FROM, upto=repair)
    assert state.error is not None
    assert (state.error.code, state.error.step) == ("malformed", "repair")
    assert state.root is None


def test_repair_that_would_change_to_is_refused():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, DAMAGED_TO, upto=repair)
    assert state.error is not None and state.error.code == "malformed"


def test_a_repaired_message_is_validated_like_any_other():
    pump = pump_for(ECHO)
    # recovered as <Text>a<b/></Text>: well-formed now, but not a string any more
    raw = envelope("<Echo><Text>a<b</Text></Echo>", to="echo")
    (state,) = run_steps(pump, raw, upto=validate_payload)
    assert [e.tag for e in state.payload_element.iter()] == ["Echo", "Text", "b"]  # what repair made of it
    assert state.error is not None and (state.error.code, state.error.step) == ("invalid-payload", "xsd")


def test_oversize_and_dtd_are_refused_before_parsing():
    pump = pump_for(ECHO, limits={"max_message_bytes": 400})
    (big,) = run_steps(pump, envelope("<Echo><Text>" + "x" * 500 + "</Text></Echo>"), upto=repair)
    assert big.error.code == "too-large"
    dtd = b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e "x">]><m>&e;</m>'
    (refused,) = run_steps(pump, dtd, upto=repair)
    assert refused.error.code == "forbidden-dtd"


def test_later_steps_keep_the_first_error():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, b"<not xml")
    assert (state.error.code, state.error.step) == ("malformed", "repair")
    assert state.route is None


async def test_pump_repairs_a_payload_and_the_handler_gets_it(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        frame = await exchange(pump, client, DAMAGED_PAYLOAD)
    assert frame.kind == "reply"
    assert frame.payload.text == "mended"
    assert [seen.payload for seen in PROBE.of("echo")] == [Echo(text="mended")]


async def test_pump_refuses_a_repair_that_changes_from_with_a_huh(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        await pump.inject(DAMAGED_FROM, from_id="tester")
        frame = await client.receive()
        assert (frame.kind, frame.code) == ("huh", "malformed")
        frame = await exchange(pump, client, DAMAGED_TO)
        assert (frame.kind, frame.code) == ("huh", "malformed")
        # the pump carries on
        reply = await client.ask(Echo(text="still here"), to="echo", timeout=30)
    assert reply.payload.text == "still here"
    assert PROBE.counts["echo"] == 1
    assert pump.counters.errored["malformed"] == 2
    assert [letter.code for letter in pump.dead_letters.recent()] == ["malformed", "malformed"]
