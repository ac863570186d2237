"""Step 3, envelope validation against the packaged envelope.xsd."""

import pytest

from agentserver.envelope import ENVELOPE_NS
from agentserver.message_bus.steps import validate_envelope
from agentserver.codes import CANNED
from tests.organisms import PROBE
from tests.support import envelope, exchange, listener, new_thread, organism, pump_for, run_steps

ECHO = listener("echo", "Echo", "echo")
NS = ENVELOPE_NS
T = new_thread()

BAD_ENVELOPES = {
    "no thread": f'<e:message xmlns:e="{NS}"><e:meta><e:from>tester</e:from></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "thread not a uuid": f'<e:message xmlns:e="{NS}"><e:meta><e:from>tester</e:from><e:thread>42</e:thread></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "no from": f'<e:message xmlns:e="{NS}"><e:meta><e:thread>{T}</e:thread></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "from not a name": f'<e:message xmlns:e="{NS}"><e:meta><e:from>te ster</e:from><e:thread>{T}</e:thread></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "to after thread": f'<e:message xmlns:e="{NS}"><e:meta><e:from>tester</e:from><e:thread>{T}</e:thread><e:to>echo</e:to></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "unknown meta field": f'<e:message xmlns:e="{NS}"><e:meta><e:from>tester</e:from><e:thread>{T}</e:thread><e:via>x</e:via></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "no payload": f'<e:message xmlns:e="{NS}"><e:meta><e:from>tester</e:from><e:thread>{T}</e:thread></e:meta></e:message>',
    "wrong namespace": f'<e:message xmlns:e="urn:other"><e:meta><e:from>tester</e:from><e:thread>{T}</e:thread></e:meta><Echo><Text>x</Text></Echo></e:message>',
    "no namespace": f"<message><meta><from>tester</from><thread>{T}</thread></meta><Echo><Text>x</Text></Echo></message>",
    # the lxml pitfall: under a default-namespace envelope a payload without xmlns=""
    # is in the envelope namespace, so it is not a payload at all
    "payload swallowed by default namespace": f'<message xmlns="{NS}"><meta><from>tester</from><thread>{T}</thread></meta><Echo><Text>x</Text></Echo></message>',
}


def test_a_valid_envelope_yields_its_routing_fields():
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, envelope("<Echo><Text>x</Text></Echo>", to="echo", thread=T), upto=validate_envelope)
    assert state.error is None
    assert (state.sender, state.to, state.thread_ref) == ("tester", "echo", T)


def test_default_namespace_envelope_with_an_explicit_empty_payload_namespace_is_valid():
    pump = pump_for(ECHO)
    raw = f'<message xmlns="{NS}"><meta><from>tester</from><thread>{T}</thread></meta><Echo xmlns=""><Text>x</Text></Echo></message>'
    (state,) = run_steps(pump, raw.encode(), upto=validate_envelope)
    assert state.error is None and (state.sender, state.to) == ("tester", None)


@pytest.mark.parametrize("case", sorted(BAD_ENVELOPES))
def test_an_invalid_envelope_is_refused(case):
    pump = pump_for(ECHO)
    (state,) = run_steps(pump, BAD_ENVELOPES[case].encode(), upto=validate_envelope)
    assert state.error is not None
    assert (state.error.code, state.error.step) == ("invalid-envelope", "envelope")


async def test_pump_answers_every_bad_envelope_with_a_short_huh_and_carries_on(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        for case in sorted(BAD_ENVELOPES):
            frame = await exchange(pump, client, BAD_ENVELOPES[case].encode())
            assert (frame.kind, frame.code) == ("huh", "invalid-envelope"), case
            # canned text only: no validator dump reaches the sender
            assert frame.message == CANNED["invalid-envelope"]
            assert b"Element" not in frame.envelope
        frame = await exchange(pump, client, envelope("<Echo><Text>fine</Text></Echo>", to="echo"))
    assert frame.kind == "reply" and frame.payload.text == "fine"
    assert PROBE.counts["echo"] == 1
    assert pump.counters.errored["invalid-envelope"] == len(BAD_ENVELOPES)
    # the full reason is kept for the operator
    assert all(letter.reason.startswith("envelope:") for letter in pump.dead_letters.recent())
