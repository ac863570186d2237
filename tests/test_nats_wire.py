"""What members say to each other (agentserver/transport/wire.py), fed as bytes: no NATS."""

from __future__ import annotations

import pytest

from agentserver.config import load_config
from agentserver.message_bus.message_state import HandlerResponse, HistoryEntry
from agentserver.primitives import TodoComplete, TodoUntil
from agentserver.transport.wire import (
    Answer,
    Ask,
    Names,
    Result,
    WireError,
    Work,
    decode,
    decode_history,
    decode_items,
    encode,
    encode_history,
    encode_items,
    fingerprint,
)
from tests.nats_harness import cluster_config


def test_every_message_comes_back_as_it_was_sent():
    for message in (Work("m.1", "m", "jobs", "<Job><N>1</N></Job>", {"thread_id": "t"}, [{"sender": "a"}]),
                    Result("m.1", [{"kind": "bytes", "xml": "<A/>"}], worker="w"),
                    Result("m.2", error={"code": "timeout", "reason": "ran over"}),
                    Ask("m.1", "w.a1", "w", "doubler", "<Number><Value>2</Value></Number>", 10.0),
                    Answer("w.a1", error={"code": "no-answer", "peer": "doubler", "call_id": "c", "message": ""})):
        assert decode(encode(message)) == message


@pytest.mark.parametrize("data", [b"", b"not json", b'{"v": 99, "kind": "work"}', b'{"v": 1, "kind": "nope"}',
                                  b'{"v": 1, "kind": "ask", "unit": "x"}'])
def test_what_cannot_be_read_is_a_wire_error(data):
    with pytest.raises(WireError):
        decode(data)


def test_names_keep_organisms_and_odd_names_apart():
    one, two = Names("alpha"), Names("alpha.beta")
    assert one.work_stream != two.work_stream and one.prefix != two.prefix
    assert Names("a.b").prefix != Names("a_b").prefix  # the same safe characters, different organisms
    work = one.work("system.boot")
    assert work.startswith(one.prefix + ".work.") and work.count(".") == 3  # one token per listener name
    assert all(c.isalnum() or c in "_-" for c in one.work_stream + one.consumer("a.b c"))


def test_the_fingerprint_is_stable_and_sees_what_members_must_share(tmp_path):
    path = tmp_path / "organism.yaml"
    path.write_text(cluster_config())
    first, again = fingerprint(load_config(path)), fingerprint(load_config(path))
    assert first == again, "two loads of one file (handlers are functions: never their addresses)"
    path.write_text(cluster_config().replace("socket: run/agentserver.sock", "socket: run/other.sock"))
    assert fingerprint(load_config(path)) == first, "where a member listens is its own"
    path.write_text(cluster_config().replace("concurrency: 2", "concurrency: 3"))
    assert fingerprint(load_config(path)) != first


def test_a_handlers_return_value_travels_as_items():
    to_xml = lambda payload: f"<{type(payload).__name__}/>"  # noqa: E731
    items = encode_items([HandlerResponse("p", to="x"), HandlerResponse.respond("q"), None, b"<A/><B/>",
                          TodoUntil(todo_id="t", wait_for="Done"), HandlerResponse(TodoComplete(todo_id="t"))], to_xml)
    assert [item["kind"] for item in items] == ["send", "send", "bytes", "todo", "todo"]
    back = decode_items(items, lambda xml: xml)
    assert back[0] == HandlerResponse("<str/>", to="x") and back[1] == HandlerResponse.respond("<str/>")
    assert back[2] == b"<A/><B/>"
    assert back[3] == TodoUntil(todo_id="t", wait_for="Done") and back[4] == TodoComplete(todo_id="t")
    with pytest.raises(TypeError, match="handler returned int"):
        encode_items(3, to_xml)


def test_history_keeps_its_entries_even_when_a_payload_cannot_be_written():
    def to_xml(payload):
        if payload == "bad":
            raise ValueError("not @xmlify")
        return f"<P>{payload}</P>"

    history = [HistoryEntry("a", "b", "P", "ok", 1.0, "m1", "c1"), HistoryEntry("b", "a", "P", "bad", 2.0, "m2", "c2")]
    back = decode_history(encode_history(history, to_xml), lambda xml: xml)
    assert back[0] == HistoryEntry("a", "b", "P", "<P>ok</P>", 1.0, "m1", "c1")
    assert back[1] == HistoryEntry("b", "a", "P", None, 2.0, "m2", "c2")
