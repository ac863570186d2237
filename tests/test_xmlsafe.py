"""Safe parsing: no DTDs or entities, size checked first, UTF-8 only; leaves are text until asked."""

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
