"""Step 6, XSD validation of the payload against the schema of its root tag."""

import pytest

from agentserver.message_bus.steps import validate_payload
from agentserver.codes import CANNED
from tests.organisms import PROBE, Typed
from tests.support import envelope, exchange, listener, organism, pump_for, run_steps

TYPED = listener("typed", "Typed", "typed_echo")

INVALID = {
    "missing field": "<Typed><Text>a</Text><Flag>true</Flag></Typed>",
    "extra field": "<Typed><Text>a</Text><Flag>true</Flag><Number>1</Number><More/></Typed>",
    "fields out of order": "<Typed><Flag>true</Flag><Text>a</Text><Number>1</Number></Typed>",
    "not an integer": "<Typed><Text>a</Text><Flag>true</Flag><Number>seven</Number></Typed>",
    "not a boolean": "<Typed><Text>a</Text><Flag>yes</Flag><Number>1</Number></Typed>",
    "element inside a string": "<Typed><Text>a<b/></Text><Flag>true</Flag><Number>1</Number></Typed>",
    "lower-case child tags": "<Typed><text>a</text><flag>true</flag><number>1</number></Typed>",
}


def test_a_valid_payload_gets_its_type():
    pump = pump_for(TYPED)
    raw = envelope("<Typed><Text>a</Text><Flag>false</Flag><Number>-3</Number></Typed>", to="typed")
    (state,) = run_steps(pump, raw, upto=validate_payload)
    assert state.error is None and state.payload_type.cls is Typed


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_payload_is_refused(case):
    pump = pump_for(TYPED)
    (state,) = run_steps(pump, envelope(INVALID[case], to="typed"), upto=validate_payload)
    assert state.error is not None
    assert (state.error.code, state.error.step) == ("invalid-payload", "xsd")
    assert state.payload_type is None


def test_an_unknown_root_tag_has_no_route():
    pump = pump_for(TYPED)
    (state,) = run_steps(pump, envelope("<Unknown><Text>a</Text></Unknown>"), upto=validate_payload)
    assert (state.error.code, state.error.step) == ("no-route", "xsd")


async def test_pump_refuses_invalid_payloads_with_a_canned_huh(start):
    pump = await start(organism(TYPED))
    async with pump.client("tester") as client:
        for case in sorted(INVALID):
            frame = await exchange(pump, client, envelope(INVALID[case], to="typed"))
            assert (frame.kind, frame.code, frame.message) == ("huh", "invalid-payload", CANNED["invalid-payload"])
        frame = await exchange(pump, client, envelope("<Unknown/>"))
        assert (frame.kind, frame.code) == ("huh", "no-route")
        reply = await client.ask(Typed(text="ok", flag=True, number=1), to="typed", timeout=30)
    assert reply.payload == Typed(text="ok", flag=True, number=1)
    assert PROBE.counts["typed"] == 1
    # the validator's own words stay in the dead letters
    reasons = [letter.reason for letter in pump.dead_letters.recent() if letter.code == "invalid-payload"]
    assert len(reasons) == len(INVALID) and all(reason.startswith("<Typed>:") for reason in reasons)
