"""Safe parsing: no DTDs or entities, size checked first, UTF-8 only; leaves are text until asked."""

import asyncio
import time

import pytest
from lxml import etree

from agentserver.xmlsafe import SafeXml, TextLeaf, UnsafeXml
from tests.organisms import PROBE, Echo
from tests.support import HANG_GUARD, envelope, exchange, listener, organism

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY secret SYSTEM "file:///etc/passwd">]><x>&secret;</x>"""


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (BILLION_LAUGHS, "forbidden-dtd"),
        (EXTERNAL_ENTITY, "forbidden-dtd"),
        (b"<a>" + b"x" * 2000 + b"</a>", "too-large"),
        (b"<a>\x00</a>", "malformed"),
        (b"<a>\xff\xfe</a>", "malformed"),
        (b"   ", "malformed"),
    ],
)
def test_dangerous_or_broken_bytes_are_refused_before_parsing(raw, code):
    with pytest.raises(UnsafeXml) as caught:
        SafeXml(max_bytes=1000).parse(raw)
    assert caught.value.code == code


def test_an_undeclared_entity_reference_is_not_expanded():
    with pytest.raises(etree.XMLSyntaxError):
        SafeXml().parse(b"<a>&undeclared;</a>")


def test_xinclude_stays_an_inert_element():
    raw = b'<a xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd" parse="text"/></a>'
    root = SafeXml().parse(raw)
    (child,) = root.iterchildren()
    assert child.tag == "{http://www.w3.org/2001/XInclude}include" and b"root:" not in etree.tostring(root)


def test_payload_leaves_keep_their_text():
    (element,) = SafeXml().fragment("<Typed><Text>007</Text><Flag>true</Flag><Number>08</Number></Typed>")
    text = element.Text
    assert isinstance(text, TextLeaf) and str(text) == "007" and text.text == "007"
    assert int(element.Number) == 8 and bool(element.Flag) is True
    with pytest.raises(ValueError):
        bool(element.Text)  # "007" is no xs:boolean


def test_fragments_must_be_elements_only():
    xml = SafeXml()
    assert len(xml.fragment(b'<?xml version="1.0"?><A/><B/>')) == 2
    for bad in (b"text<A/>", b"<A/>tail", b"just text"):
        with pytest.raises((UnsafeXml, etree.XMLSyntaxError)):
            xml.fragment(bad)


async def test_the_pump_refuses_hostile_input_with_a_huh_and_carries_on(start):
    pump = await start(organism(listener("echo", "Echo", "echo"), limits={"max_message_bytes": 4096}))
    laughs_in_envelope = envelope("<Echo><Text>&lol3;</Text></Echo>", to="echo").replace(
        b"<env:message", BILLION_LAUGHS.split(b"<lolz>")[0].split(b"?>", 1)[1] + b"<env:message", 1
    )
    async with pump.client("tester") as client:
        for raw, code in (
            (laughs_in_envelope, "forbidden-dtd"),
            (EXTERNAL_ENTITY, "forbidden-dtd"),
            (envelope("<Echo><Text>" + "x" * 5000 + "</Text></Echo>", to="echo"), "too-large"),
        ):
            frame = await exchange(pump, client, raw)
            assert (frame.kind, frame.code) == ("huh", code)
        reply = await client.ask(Echo(text="fine"), to="echo", timeout=HANG_GUARD)
    assert reply.payload.text == "fine" and PROBE.counts["echo"] == 1
    assert all(b"root:" not in letter.raw for letter in pump.dead_letters.recent())


# ---------------------------------------------------------------------- counts (DESIGN §10)
def _frame(payload: str) -> bytes:
    return (f'<env:message xmlns:env="https://xml-pipeline.org/ns/envelope/v1"><env:meta><env:from>c</env:from>'
            f'<env:thread>00000000-0000-0000-0000-000000000001</env:thread></env:meta>{payload}</env:message>').encode()


LIMITED = dict(max_elements=1_000, max_attributes=100, max_namespace_declarations=10)


@pytest.mark.parametrize("payload, what", [
    ("<Echo " + " ".join(f'a{i}="x"' for i in range(101)) + "><Text>hi</Text></Echo>", "101 attributes"),
    ("<Echo>" + "<x/>" * 1_000 + "</Echo>", "elements"),
    ("<Echo " + " ".join(f'xmlns:p{i}="urn:{i}"' for i in range(11)) + "><Text>hi</Text></Echo>", "namespace declarations"),
])
def test_more_than_the_counts_allow_is_too_large_before_anything_superlinear(payload, what):
    with pytest.raises(UnsafeXml) as refused:
        SafeXml(**LIMITED).parse(_frame(payload))
    assert refused.value.code == "too-large" and what in str(refused.value)


def test_the_words_in_text_do_not_count_as_declarations_or_attributes():
    text = "xmlns a=b " * 50  # 50 'xmlns' and 50 '=' in text, no declaration, no attribute
    root = SafeXml(**LIMITED).parse(_frame(f"<Echo><Text>{text}</Text></Echo>"))
    assert next(root[1].iterchildren()).text == text


def test_the_counts_hold_for_repaired_and_fragment_input_too():
    xml = SafeXml(**LIMITED)
    many = "<Echo " + " ".join(f'a{i}="x"' for i in range(101)) + "><Text>hi</Echo>"  # needs repair, too
    with pytest.raises(UnsafeXml):
        xml.recover(_frame(many))
    with pytest.raises(UnsafeXml):
        xml.fragment("<Echo>" + "<x/>" * 1_000 + "</Echo>")


@pytest.mark.parametrize("kind", ["attributes", "namespaces-used-by-attributes", "elements"])
async def test_any_frame_is_refused_in_well_under_a_second_and_others_are_served(start, kind):
    # before: 40,000 attributes took 34.5 s of the server's only thread; 80,000 never ended
    from tests.organisms import Echo
    from tests.support import HANG_GUARD, listener, organism

    n = 80_000
    if kind == "attributes":
        payload = "<Echo " + " ".join(f'a{i}="x"' for i in range(n)) + "><Text>hi</Text></Echo>"
    elif kind == "elements":
        payload = "<Echo><Text>hi</Text>" + "<x/>" * 200_000 + "</Echo>"
    else:
        n = 20_000
        payload = ("<Echo " + " ".join(f'xmlns:p{i}="urn:x{i}"' for i in range(n)) + " "
                   + " ".join(f'p{i}:a="1"' for i in range(n)) + "><Text>hi</Text></Echo>")
    raw = _frame(payload).replace(b"<env:from>c</env:from>", b"<env:from>hostile</env:from>")
    assert len(raw) < 1 << 20  # under the size limit: only the counts refuse it
    pump = await start(organism(listener("echo", "Echo", "echo")))
    async with pump.client("hostile") as hostile, pump.client("bystander") as bystander:
        started = time.monotonic()
        await pump.inject(raw, from_id="hostile")
        reply = await bystander.ask(Echo(text="hi"), to="echo", timeout=HANG_GUARD)
        bystander_waited = time.monotonic() - started
        frame = await asyncio.wait_for(hostile.receive(), HANG_GUARD)
        refused_after = time.monotonic() - started
    assert (frame.kind, frame.code) == ("huh", "too-large")
    assert reply.payload.text == "hi"
    assert refused_after < 5.0 and bystander_waited < 2.0, (refused_after, bystander_waited)
