"""outbound.py: frames for clients (built lazily, once) and what `ask` gives back or raises."""

from lxml import etree

from agentserver.outbound import (CONTROL_NS, AskError, AskTimeout, HuhError, Outbound, OutboundKind, RemoteError,
                                  Reply)


def test_the_envelope_is_made_on_first_use_and_only_once():
    calls = []

    def frame() -> bytes:
        calls.append(1)
        return b"<frame/>"

    outbound = Outbound(OutboundKind.REPLY, "t1", "echo", frame)
    assert calls == []
    assert outbound.envelope == b"<frame/>" and outbound.envelope == b"<frame/>"
    assert calls == [1]
    assert Outbound(OutboundKind.HUH, "t", "system", b"<huh/>").envelope == b"<huh/>"


def test_payload_xml_is_the_exclusive_canonical_bytes_of_the_element():
    element = etree.fromstring('<Echo b="2"  a="1"><Text>hi</Text></Echo>')
    outbound = Outbound(OutboundKind.REPLY, "t", "echo", b"", payload_xml=element)
    assert outbound.payload_xml == b'<Echo a="1" b="2"><Text>hi</Text></Echo>'
    assert Reply("obj", "echo", "t", outbound).xml == outbound.payload_xml.decode()  # text, as in DESIGN §13
    assert Reply("obj", "echo", "t", outbound).element.tag == "Echo"
    assert Reply("obj", "echo", "t").xml == "" and Reply("obj", "echo", "t").element is None


def test_a_stream_piece_is_a_control_tokens_frame():
    piece = Outbound.stream("t1", "agent", "Hel<lo")
    assert (piece.kind, piece.message, piece.sender) == (OutboundKind.STREAM, "Hel<lo", "agent")
    element = etree.fromstring(piece.envelope)
    assert element.tag == f"{{{CONTROL_NS}}}tokens" and element.text == "Hel<lo"
    assert element.attrib == {"thread": "t1", "from": "agent"}


def test_an_ack_is_a_control_ack_frame_numbering_the_envelope():
    ack = Outbound.ack(7, "t1", "m-1")
    assert (ack.kind, ack.seq, ack.message, ack.sender) == (OutboundKind.ACK, 7, "m-1", "system")
    element = etree.fromstring(ack.envelope)
    assert element.tag == f"{{{CONTROL_NS}}}ack"
    assert element.attrib == {"seq": "7", "thread": "t1", "message": "m-1"}


def test_kinds_read_as_their_text():
    assert str(OutboundKind.HUH) == "huh" and OutboundKind.ACK == "ack"


def test_the_ask_errors():
    huh = HuhError("no-route", "No listener.", "t1")
    remote = RemoteError("hops", "Too many.", "t2", "system")
    assert str(huh) == "no-route: No listener." and (huh.code, huh.thread_id) == ("no-route", "t1")
    assert (remote.code, remote.message, remote.sender) == ("hops", "Too many.", "system")
    assert isinstance(huh, AskError) and isinstance(remote, AskError)
    assert issubclass(AskTimeout, AskError) and issubclass(AskTimeout, TimeoutError)
