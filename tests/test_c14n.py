"""Step 2, exclusive C14N: one byte form per message, whatever the sender's spelling."""

from lxml import etree

from agentserver.envelope import ENVELOPE_NS
from agentserver.message_bus.steps import canonicalize
from tests.organisms import PROBE
from tests.support import exchange, listener, new_thread, organism, pump_for, run_steps

ECHO = listener("echo", "Echo", "echo")
THREAD = new_thread()

PREFIXED = (
    f'<env:message xmlns:env="{ENVELOPE_NS}"><env:meta><env:from>tester</env:from><env:to>nobody</env:to>'
    f'<env:thread>{THREAD}</env:thread></env:meta><Echo a="1" b="2"><Text>a &amp; b</Text><Empty/></Echo></env:message>'
).encode()
# the same message spelled differently: an XML declaration, whitespace inside tags, a
# comment, an unused namespace declaration, attributes in another order, the ampersand as a
# character reference, an empty element written <x></x>. (C14N keeps prefixes as written.)
RESPELLED = (
    f'<?xml version="1.0" encoding="UTF-8"?>\n<env:message   xmlns:unused="urn:x" xmlns:env="{ENVELOPE_NS}"\n>'
    f'<env:meta ><env:from>tester</env:from><env:to >nobody</env:to><env:thread>{THREAD}</env:thread></env:meta\n>'
    f'<!-- a comment --><Echo xmlns="" b="2"  a="1"><Text>a &#38; b</Text ><Empty></Empty></Echo></env:message>'
).encode()


def test_two_spellings_of_one_message_have_the_same_canonical_bytes():
    pump = pump_for(ECHO)
    (a,) = run_steps(pump, PREFIXED, upto=canonicalize)
    (b,) = run_steps(pump, RESPELLED, upto=canonicalize)
    assert a.error is None and b.error is None
    assert a.canonical == b.canonical
    assert b"urn:x" not in b.canonical and b"comment" not in b.canonical
    # canonical bytes read back to the same message
    again = etree.fromstring(a.canonical)
    assert etree.tostring(again, method="c14n", exclusive=True) == a.canonical


def test_a_relative_namespace_uri_cannot_be_canonicalized():
    pump = pump_for(ECHO)
    raw = PREFIXED.replace(b"<Text>", b'<Text xmlns:r="relative/uri"><r:x/>', 1)
    (state,) = run_steps(pump, raw, upto=canonicalize)
    assert state.error is not None and (state.error.code, state.error.step) == ("malformed", "c14n")


async def test_pump_records_the_canonical_bytes_whatever_the_spelling(start):
    pump = await start(organism(ECHO))
    async with pump.client("tester") as client:
        for raw in (PREFIXED, RESPELLED):  # both refused by the XSD step (attributes, <Empty>)
            frame = await exchange(pump, client, raw)
            assert (frame.kind, frame.code) == ("huh", "invalid-payload")
        raw = PREFIXED.replace(b"<Text>", b'<Text xmlns:r="relative/uri"><r:x/>', 1)
        frame = await exchange(pump, client, raw)
        assert (frame.kind, frame.code) == ("huh", "malformed")
    first, second, third = pump.dead_letters.recent()
    assert first.raw == second.raw
    assert first.raw.startswith(b'<env:message xmlns:env="') and b'<Echo a="1" b="2"><Text>a &amp; b</Text><Empty></Empty></Echo>' in first.raw
    assert third.step == "c14n"
    assert PROBE.counts["echo"] == 0
