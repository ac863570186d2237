"""Property-based tests of the ingest path, in-process (DESIGN.md §6: every message has
exactly one outcome).

For arbitrary bytes, for soups of XML-ish tokens and for random mutations of valid
envelopes, fed to a running pump as one external sender:

- nothing raises out of the pump (its task keeps running, `inject` returns, nothing is
  logged at ERROR level);
- every input has exactly one outcome: delivered to one handler (and, for `echo`, one
  reply back), or one `<huh>` to its sender with one dead letter;
- the counters balance after every input (accepted == handled + errored, nothing in
  flight).

And a valid envelope with any text is delivered and echoed back unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from agentserver.envelope import ENVELOPE_NS, build_envelope
from agentserver.outbound import Outbound
from tests.fault_organisms import organism
from tests.support import HANG_GUARD, assert_counters, make_pump

CLIENT = "prop"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Outcome:
    huhs: int
    replies: int
    echo_handled: int
    sink_handled: int
    errored: int
    dead_letters: int


class PumpUnderTest:
    """A pump running on its own event loop; `feed` injects one input and waits for idle."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pump = make_pump(organism(("echo", "Echo", "echo"), ("sink", "Sunk", "sink"), name="property-organism"))
        self.task = self.loop.create_task(self.pump.run())
        self.frames: list[Outbound] = []
        self.pump.mailboxes.attach(CLIENT, self._mailbox)
        self.errors: list[logging.LogRecord] = []
        self._catcher = _Catcher(self.errors)
        logging.getLogger("agentserver").addHandler(self._catcher)
        self.loop.run_until_complete(self._idle())  # the boot message

    def _mailbox(self, outbound: Outbound) -> bool:
        self.frames.append(outbound)
        return True

    async def _idle(self) -> None:
        await asyncio.wait_for(self.pump.idle(), HANG_GUARD)

    async def _feed(self, raw: bytes) -> None:
        await self.pump.inject(raw, from_id=CLIENT)
        await self._idle()

    def feed(self, raw: bytes) -> tuple[Outcome, list[Outbound]]:
        counters, listeners = self.pump.counters, self.pump.counters.listeners
        echo, sink = counters.listener("echo"), counters.listener("sink")
        frames_before = len(self.frames)
        before = (echo.handled, sink.handled, counters.errored_total, self.pump.dead_letters.total)
        self.loop.run_until_complete(self._feed(raw))
        assert not self.task.done(), "the pump stopped"
        assert not self.errors, [record.getMessage() for record in self.errors]
        assert counters.in_flight == 0 and counters.accepted == counters.handled + counters.errored_total
        new = self.frames[frames_before:]
        after = (echo.handled, sink.handled, counters.errored_total, self.pump.dead_letters.total)
        delta = [b - a for a, b in zip(before, after)]
        assert all(stats.running == 0 and stats.waiting == 0 for stats in listeners.values())
        outcome = Outcome(
            huhs=sum(frame.kind == "huh" for frame in new),
            replies=sum(frame.kind == "reply" for frame in new),
            echo_handled=delta[0], sink_handled=delta[1], errored=delta[2], dead_letters=delta[3],
        )
        return outcome, new

    def close(self) -> None:
        logging.getLogger("agentserver").removeHandler(self._catcher)
        report = self.loop.run_until_complete(self.pump.shutdown(HANG_GUARD))
        self.loop.run_until_complete(asyncio.wait_for(self.task, HANG_GUARD))
        self.loop.close()
        assert report.clean and report.dropped == 0, report
        assert_counters(self.pump)


class _Catcher(logging.Handler):
    def __init__(self, sink: list) -> None:
        super().__init__(level=logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


REFUSED = Outcome(huhs=1, replies=0, echo_handled=0, sink_handled=0, errored=1, dead_letters=1)
ECHOED = Outcome(huhs=0, replies=1, echo_handled=1, sink_handled=0, errored=0, dead_letters=0)
SUNK = Outcome(huhs=0, replies=0, echo_handled=0, sink_handled=1, errored=0, dead_letters=0)


@pytest.fixture(scope="module")
def pump_under_test():
    harness = PumpUnderTest()
    yield harness
    harness.close()


def assert_one_outcome(harness: PumpUnderTest, raw: bytes) -> Outcome:
    outcome, frames = harness.feed(raw)
    assert outcome in (REFUSED, ECHOED, SUNK), (raw[:300], outcome, [frame.envelope[:300] for frame in frames])
    event(f"refused: {frames[0].code}" if outcome == REFUSED else "delivered")
    return outcome


# ------------------------------------------------------------------ strategies
def valid_text() -> st.SearchStrategy[str]:
    """Any text XML 1.0 can carry (no C0 controls but tab/newline/CR, no surrogates, no U+FFFE/F)."""
    characters = st.characters(min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff")
    return st.text(characters | st.sampled_from("\t\n\r"), max_size=60)


@st.composite
def valid_envelopes(draw) -> bytes:
    text = draw(valid_text())
    tag, to = draw(st.sampled_from([("Echo", "echo"), ("Echo", None), ("Sunk", "sink"), ("Sunk", None)]))
    payload = etree.Element(tag)
    etree.SubElement(payload, "Text").text = text
    thread = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1))))
    return etree.tostring(build_envelope(payload, sender=CLIENT, to=to, thread=thread))


TOKENS = [
    f'<env:message xmlns:env="{ENVELOPE_NS}">'.encode(), f'<message xmlns="{ENVELOPE_NS}">'.encode(),
    b"<env:meta>", b"</env:meta>", b"<env:from>prop</env:from>", b"<env:from>echo</env:from>",
    b"<env:from>system</env:from>", b"<env:to>echo</env:to>", b"<env:to>sink</env:to>", b"<env:to>system.boot</env:to>",
    b"<env:thread>0b8e5d5c-6f6d-4a52-9f62-1c2b8f1d9e01</env:thread>", b"<env:thread>x</env:thread>",
    b"</env:message>", b"<Echo>", b"</Echo>", b"<Sunk>", b"</Sunk>", b"<Text>", b"</Text>", b"<Text/>", b"hi", b" ",
    b"&amp;", b"&lt;", b"&#0;", b"&#x1F600;", b"&lol;", b"<![CDATA[", b"]]>", b"<!--", b"-->", b"<?pi x?>",
    b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-7"?>', b"<!DOCTYPE m [<!ENTITY lol \"x\">]>",
    b"<!ENTITY", b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", b'xmlns=""', b"<xi:include xmlns:xi=\"http://www.w3.org/2001/XInclude\" href=\"/etc/passwd\"/>",
    b"<Boot><OrganismName>x</OrganismName><Timestamp>t</Timestamp><ListenerCount>1</ListenerCount></Boot>",
    b"<SystemError><Code>hops</Code><Message>m</Message></SystemError>",
]

token_soup = st.lists(st.sampled_from(TOKENS), max_size=30).map(b"".join)


@st.composite
def restructured_envelopes(draw) -> bytes:
    """A well-formed envelope with its fields and payload swapped for plausible wrong ones."""
    sender = draw(st.sampled_from([CLIENT, CLIENT, "echo", "sink", "system", "system.boot", "core", "someone", ""]))
    to = draw(st.sampled_from(["echo", "sink", None, None, "system.boot", "system", "nobody", CLIENT]))
    thread = draw(st.sampled_from([str(uuid.uuid4()), str(uuid.uuid4()), "not-a-uuid", "", None]))
    tag = draw(st.sampled_from(["Echo", "Echo", "Sunk", "Sunk", "Boot", "SystemError", "Nobody", "{%s}Echo" % ENVELOPE_NS]))
    payloads = []
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        payload = etree.Element(tag)
        etree.SubElement(payload, draw(st.sampled_from(["Text", "Text", "Text", "Wrong"]))).text = draw(valid_text())
        payloads.append(payload)
    root = build_envelope(payloads, sender=sender, to=to, thread=thread or "")
    if thread is None:
        meta = root[0]
        meta.remove(meta[-1])
    return etree.tostring(root)


@st.composite
def mutated_envelopes(draw) -> bytes:
    """An envelope (valid, or restructured) with zero to four random edits of its bytes."""
    data = bytearray(draw(st.one_of(valid_envelopes(), restructured_envelopes())))
    payload_start = data.find(b"</env:meta>")
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        low = payload_start if payload_start >= 0 and draw(st.booleans()) else 0
        at = draw(st.integers(min(low, len(data) - 1), len(data) - 1))
        kind = draw(st.sampled_from(["flip", "delete", "insert", "token", "duplicate", "truncate", "swap"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at: at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "duplicate":
            data[at:at] = data[at: at + draw(st.integers(1, 40))]
        elif kind == "truncate":
            del data[at:]
        else:
            other = draw(st.integers(0, len(data) - 1))
            data[at], data[other] = data[other], data[at]
    return bytes(data)


# ------------------------------------------------------------------ properties
@SETTINGS
@given(raw=st.binary(max_size=600))
def test_arbitrary_bytes_have_exactly_one_outcome(pump_under_test, raw):
    assert_one_outcome(pump_under_test, raw)


@SETTINGS
@given(raw=token_soup)
def test_xml_token_soup_has_exactly_one_outcome(pump_under_test, raw):
    assert_one_outcome(pump_under_test, raw)


@settings(SETTINGS, max_examples=300)
@given(raw=mutated_envelopes())
def test_mutated_envelopes_have_exactly_one_outcome(pump_under_test, raw):
    assert_one_outcome(pump_under_test, raw)


@SETTINGS
@given(text=valid_text(), to=st.sampled_from(["echo", None]))
def test_a_valid_envelope_with_any_text_is_echoed_unchanged(pump_under_test, text, to):
    payload = etree.Element("Echo")
    etree.SubElement(payload, "Text").text = text
    raw = etree.tostring(build_envelope(payload, sender=CLIENT, to=to, thread=str(uuid.uuid4())))
    outcome, frames = pump_under_test.feed(raw)
    assert outcome == ECHOED, (raw, frames)
    reply = etree.fromstring(frames[0].payload_xml)
    assert (reply.tag, reply.findtext("Text") or "") == ("Echo", text)
