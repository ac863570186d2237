"""What members say to each other (agentserver/transport/wire.py), fed as bytes: no NATS."""

from __future__ import annotations

import pytest

from agentserver.config import load_config
from agentserver.journal import Record, fold
from agentserver.message_bus.message_state import HandlerResponse, HistoryEntry
from agentserver.primitives import TodoComplete, TodoUntil
from agentserver.transport.wire import (
    Answer,
    Ask,
    Names,
    Result,
    WireError,
    Work,
    by_conversation,
    decode,
    decode_history,
    decode_items,
    decode_ops,
    encode,
    encode_history,
    encode_items,
    encode_ops,
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


def _unit(seq: int, conversation: str, envelope: bytes = b"<m/>") -> Record:
    return Record(seq, conversation, f"id{seq}", "listener", "a", envelope, {"thread": "t"})


def test_journal_operations_go_to_their_conversation_and_come_back_as_they_were():
    units: dict[int, str] = {}
    ops = [("conversation", "c1", "client", None, 1.0), ("append", _unit(1, "c1", b"\xff\x00 not utf-8")),
           ("thread", "c1", "t1", '["a"]', None, None), ("conversation", "c2", "client", "x", 2.0),
           ("append", _unit(2, "c2")), ("seen", "client", "m1", 3.0),
           ("finish", 1, (_unit(3, "c1"), _unit(4, "c2"))), ("done", 2), ("forget", "c2")]
    split = by_conversation(ops, units)
    assert set(split) == {"c1", "c2"}, "seen (dedupe) stays with its member"
    assert [op[0] for op in split["c1"]] == ["conversation", "append", "thread", "finish"]
    assert split["c1"][3][2] == (_unit(3, "c1"),), "an output in another conversation is appended there"
    assert [op[0] for op in split["c2"]] == ["conversation", "append", "append", "done", "forget"]
    assert units == {3: "c1", 4: "c2"}, "a done unit is forgotten, its outputs known by their number"
    for group in split.values():
        assert decode_ops(encode_ops(group)) == group
    assert by_conversation([("done", 3)], units) == {"c1": [("done", 3)]}, "done names only a number"


def test_a_member_journal_folds_to_what_a_restart_would_find():
    units: dict[int, str] = {}
    ops = [("conversation", "c1", "client", None, 1.0), ("thread", "c1", "t1", '["a"]', None, None),
           ("append", _unit(1, "c1")), ("history", "c1", "t1", '{"sender": "a"}'),
           ("finish", 1, (_unit(2, "c1"),)), ("awaited", "c1", "call1", "t1"),
           ("conversation", "c2", "client", None, 2.0), ("append", _unit(3, "c2")), ("forget", "c2")]
    published = [decode_ops(encode_ops(group)) for group in by_conversation(ops, units).values()]
    snapshot = fold([op for group in published for op in group], "cluster")
    assert [record.seq for record in snapshot.units] == [2], "what was not done, of what is open"
    assert [found["key"] for found in snapshot.conversations] == ["c1"]
    assert [found["id"] for found in snapshot.threads] == ["t1"]
    assert snapshot.history == [("c1", "t1", {"sender": "a"})] and snapshot.calls == [("c1", "call1", "t1")]


@pytest.mark.parametrize("data", [b"{}", b'{"v": 1, "ops": [["append", {}]]}', b"not json"])
def test_a_damaged_journal_message_is_a_wire_error(data):
    with pytest.raises(WireError):
        decode_ops(data)


def test_journal_subjects_keep_members_and_conversations_apart():
    names = Names("org")
    assert names.journal("m1", "a.b c") != names.journal("m1", "a_b_c") != names.journal("m2", "a.b c")
    assert names.journal("m1", "a.b c").startswith(names.journal("m1")[:-1])
    assert " " not in names.journal("m1", "a.b c").split(".")[-1]
