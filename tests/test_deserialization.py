"""Step 7, deserialization: the validated element -> an instance of its class, text kept exact."""

import pytest

from agentserver.message_bus.steps import deserialize
from tests.organisms import PROBE, Strict, Typed
from tests.support import envelope, exchange, listener, organism, pump_for, run_steps

TYPED = listener("typed", "Typed", "typed_echo")
STRICT = listener("strict", "Strict", "strict")

# str fields keep their text exactly: objectify would have read "007" as 7, "true" as True
TEXTS = ["007", "true", "false", "1", "0", "1.50", "1e3", "NaN", "None", "  padded  ", "", "a &amp; b"]


@pytest.mark.parametrize("text", TEXTS)
def test_a_str_field_keeps_its_text_exactly(text):
    pump = pump_for(TYPED)
    raw = envelope(f"<Typed><Text>{text}</Text><Flag>1</Flag><Number>+42</Number></Typed>", to="typed")
    (state,) = run_steps(pump, raw, upto=deserialize)
    assert state.error is None
    expected = text.replace("&amp;", "&")
    assert state.payload == Typed(text=expected, flag=True, number=42)
    assert type(state.payload.text) is str and type(state.payload.number) is int and type(state.payload.flag) is bool


@pytest.mark.parametrize(("lexical", "value"), [("true", True), ("1", True), ("false", False), ("0", False)])
def test_booleans_follow_xsd_lexical_rules(lexical, value):
    pump = pump_for(TYPED)
    raw = envelope(f"<Typed><Text>t</Text><Flag>{lexical}</Flag><Number>0</Number></Typed>", to="typed")
    (state,) = run_steps(pump, raw, upto=deserialize)
    assert state.payload.flag is value


def test_valid_xml_the_class_refuses_cannot_be_deserialized():
    pump = pump_for(STRICT)
    (state,) = run_steps(pump, envelope("<Strict><Count>-1</Count></Strict>", to="strict"), upto=deserialize)
    assert state.error is not None
    assert (state.error.code, state.error.step) == ("unreadable-payload", "deserialize")
    assert "must not be negative" in state.error.reason


@pytest.mark.parametrize("text", ["007", "true"])
async def test_pump_round_trips_str_fields_exactly(start, text):
    pump = await start(organism(TYPED))
    async with pump.client("tester") as client:
        reply = await client.ask(f"<Typed><Text>{text}</Text><Flag>true</Flag><Number>7</Number></Typed>", to="typed", timeout=30)
    (seen,) = PROBE.of("typed")
    assert seen.payload.text == text  # what the handler got
    assert reply.payload.text == text  # what came back through the pipeline
    assert f"<Text>{text}</Text>" in reply.xml


async def test_pump_answers_an_unreadable_payload_with_a_huh(start):
    pump = await start(organism(STRICT))
    async with pump.client("tester") as client:
        frame = await exchange(pump, client, envelope("<Strict><Count>-1</Count></Strict>", to="strict"))
        assert (frame.kind, frame.code) == ("huh", "unreadable-payload")
        reply = await client.ask(Strict(count=2), to="strict", timeout=30)
    assert reply.payload.text == "count=2"
    assert PROBE.counts["strict"] == 1
