"""The connection protocol as tables, h11-style: (state, bytes in) -> (events out, bytes out,
state after), for the server side and the client side, then the two machines run against
each other with no socket in between. Every refusal code of the connection has a row."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from lxml import etree

from agentserver.codes import CANNED, ErrorCode
from agentserver.control import CONTROL_NS
from agentserver.envelope import ENVELOPE_NS, build_huh
from agentserver.framing import encode_frame
from agentserver.protocol import (
    NEED_DATA, NOT_TAKEN, TRANSITIONS, Answer, CancelRequest, ClientConnection, ClientState, Closed,
    ACKS_SINCE, Ack, DeadLettersRequest, Envelope, Hello, Hop, LocalProtocolError, Named, ProtocolError, Refusal, ServerConnection,
    ServerSettings, State, StatusRequest, Welcome,
)
from agentserver.xmlsafe import SafeXml

E = ErrorCode
TOKEN = b"s3cret"
THREAD = "11111111-2222-4333-8444-555555555555"
SETTINGS = ServerSettings(max_frame=8192, max_buffer=8192 + 4, hello_timeout_s=10, frame_timeout_s=30,
                          idle_timeout_s=3600, conversation_timeout_s=600)
XML = SafeXml(1 << 20)


def ctl(element: str) -> bytes:
    """A control element as a client writes it: ctl('status id="2"') -> <ctl:status xmlns:ctl=... id="2"/>."""
    name, _, attrs = element.partition(" ")
    return f'<ctl:{name} xmlns:ctl="{CONTROL_NS}" {attrs}/>'.encode()


def envelope(sender: str | None = "alice", payload: str = "<Echo><Text>x</Text></Echo>") -> bytes:
    sender_xml = f"<env:from>{sender}</env:from>" if sender is not None else ""
    return (f'<env:message xmlns:env="{ENVELOPE_NS}"><env:meta>{sender_xml}<env:to>echo</env:to>'
            f"<env:thread>{THREAD}</env:thread></env:meta>{payload}</env:message>").encode()


def f(*frames: bytes) -> bytes:
    return b"".join(encode_frame(frame) for frame in frames)


HELLO = ctl('hello id="1" name="alice" versions="1"')
TCP_HELLO = ctl('hello id="1" name="alice" versions="1" token="s3cret"')


def name_problem(name: str) -> str | None:
    if name in ("system", "core") or name.startswith("system."):
        return "reserved name"
    if name == "echo":
        return "that is a listener"
    if name == "bob":
        return "another client has it"
    return None


def server(side: str, prelude: bytes = b"", now: float = 0.0) -> ServerConnection:
    machine = ServerConnection(SETTINGS, token=TOKEN if side == "tcp" else None, name_problem=name_problem, xml=XML,
                               now=now)
    if prelude:
        events, _ = run(machine, prelude, now)
        assert not any(isinstance(event, Refusal) for event in events), events
    return machine


def run(machine: ServerConnection, data: bytes, now: float = 0.0) -> tuple[list, list]:
    """Feed `data`; take events until NEED_DATA or Closed. Returns (events, frames sent)."""
    machine.receive_data(data, now)
    events = []
    while (event := machine.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, Closed):
            break
    sent = [event.frame for event in events if isinstance(event, (Hello, Refusal)) and event.frame]
    return events, sent


def summary(event) -> tuple:
    if isinstance(event, Hello):
        return ("hello", event.name, event.version, event.request_id)
    if isinstance(event, Named):
        return ("named", event.name)
    if isinstance(event, Envelope):
        return ("envelope",)
    if isinstance(event, StatusRequest):
        return ("status", event.request_id)
    if isinstance(event, DeadLettersRequest):
        return ("deadletters", event.request_id, event.limit)
    if isinstance(event, CancelRequest):
        return ("cancel", event.request_id, event.thread)
    if isinstance(event, Refusal):
        return ("refusal", event.code, event.close)
    if isinstance(event, Closed):
        return ("closed",)
    raise AssertionError(event)


def said(frame: bytes) -> tuple:
    """What a frame the server sent says: (kind, attributes) of a control frame, ("huh", code) of a <huh>."""
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    root = etree.fromstring(frame[4:])
    if root.tag.startswith("{%s}" % CONTROL_NS):
        return (etree.QName(root).localname, dict(root.attrib))
    return ("huh", root.find("huh").get("code"))


def error(code: str, **attrs: str) -> tuple:
    return ("error", {**{k.replace("_", "-"): v for k, v in attrs.items() if k != "id"},
                      **({"id": attrs["id"]} if "id" in attrs else {}), "code": code})


WELCOME = ("welcome", {"id": "1", "name": "alice", "version": "1", "max-frame": "8192", "conversation-timeout": "600"})

# (row, side, prelude, bytes in, events out, frames out, state after)
SERVER_ROWS = [
    # a Unix connection: UNNAMED until a hello or its first envelope names it
    ("unix hello", "unix", b"", f(HELLO), [("hello", "alice", 1, "1")], [WELCOME], State.OPEN),
    ("unix hello offering more versions picks the highest in common", "unix", b"",
     f(ctl('hello id="1" name="alice" versions="1 2 7"')), [("hello", "alice", 2, "1")],
     [("welcome", {**WELCOME[1], "version": "2"})], State.OPEN),
    ("no version in common", "unix", b"", f(ctl('hello id="1" name="alice" versions="3 4"')),
     [("refusal", E.UNSUPPORTED_VERSION, True), ("closed",)], [error("unsupported-version", id="1", close="true")],
     State.CLOSED),
    ("versions missing", "unix", b"", f(ctl('hello id="1" name="alice"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument", id="1")], State.UNNAMED),
    ("versions not ASCII digits", "unix", b"", f(ctl('hello id="1" name="alice" versions="\u0661"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument", id="1")], State.UNNAMED),
    ("hello without an id", "unix", b"", f(ctl('hello name="alice" versions="1"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument")], State.UNNAMED),
    ("hello naming a listener", "unix", b"", f(ctl('hello id="1" name="echo" versions="1"')),
     [("refusal", E.FORBIDDEN_SENDER, False)], [error("forbidden-sender", id="1")], State.UNNAMED),
    ("hello naming a reserved name", "unix", b"", f(ctl('hello id="1" name="system.boot" versions="1"')),
     [("refusal", E.FORBIDDEN_SENDER, False)], [error("forbidden-sender", id="1")], State.UNNAMED),
    ("hello with a name another client has", "unix", b"", f(ctl('hello id="1" name="bob" versions="1"')),
     [("refusal", E.FORBIDDEN_SENDER, False)], [error("forbidden-sender", id="1")], State.UNNAMED),
    ("hello with a name that is no name", "unix", b"", f(ctl('hello id="1" name="bad name" versions="1"')),
     [("refusal", E.FORBIDDEN_SENDER, False)], [error("forbidden-sender", id="1")], State.UNNAMED),
    ("a first envelope names the connection", "unix", b"", f(envelope("alice")),
     [("named", "alice"), ("envelope",)], [], State.OPEN),
    ("a first envelope from a listener", "unix", b"", f(envelope("echo")),
     [("refusal", E.FORBIDDEN_SENDER, False)], [("huh", "forbidden-sender")], State.UNNAMED),
    ("a first envelope without <from>", "unix", b"", f(envelope(None)),
     [("refusal", E.INVALID_ENVELOPE, False)], [("huh", "invalid-envelope")], State.UNNAMED),
    ("a first frame that is not XML", "unix", b"", f(b"hello, server"),
     [("refusal", E.MALFORMED, False)], [("huh", "malformed")], State.UNNAMED),
    ("a first frame with a DTD", "unix", b"", f(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'),
     [("refusal", E.FORBIDDEN_DTD, False)], [("huh", "forbidden-dtd")], State.UNNAMED),
    ("an oversize header: refused at once, the connection stays", "unix", b"", struct.pack(">I", 8193),
     [("refusal", E.TOO_LARGE, False)], [("huh", "too-large")], State.UNNAMED),
    ("status before a name (the owner may ask)", "unix", b"", f(ctl('status id="7"')),
     [("status", "7")], [], State.UNNAMED),
    # control requests of a named connection: strict arguments, the id echoed
    ("status", "unix", f(HELLO), f(ctl('status id="2"')), [("status", "2")], [], State.OPEN),
    ("deadletters with a limit", "unix", f(HELLO), f(ctl('deadletters id="3" limit="20"')),
     [("deadletters", "3", 20)], [], State.OPEN),
    ("deadletters without a limit", "unix", f(HELLO), f(ctl('deadletters id="3"')),
     [("deadletters", "3", None)], [], State.OPEN),
    ("deadletters limit=\u00b2 (str.isdigit would take it)", "unix", f(HELLO), f(ctl('deadletters id="4" limit="\u00b2"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument", id="4")], State.OPEN),
    ("deadletters limit=0", "unix", f(HELLO), f(ctl('deadletters id="4" limit="0"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument", id="4")], State.OPEN),
    ("cancel", "unix", f(HELLO), f(ctl(f'cancel id="5" thread="{THREAD}"')), [("cancel", "5", THREAD)], [], State.OPEN),
    ("cancel of a thread that is no thread id", "unix", f(HELLO), f(ctl('cancel id="5" thread="../x"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument", id="5")], State.OPEN),
    ("an unknown verb", "unix", f(HELLO), f(ctl('frobnicate id="9"')),
     [("refusal", E.UNKNOWN_VERB, False)], [error("unknown-verb", id="9")], State.OPEN),
    ("a request without an id", "unix", f(HELLO), f(ctl("status")),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument")], State.OPEN),
    ("a request with an id that is no id", "unix", f(HELLO), f(ctl('status id="&lt;x&gt;"')),
     [("refusal", E.BAD_ARGUMENT, False)], [error("bad-argument")], State.OPEN),
    ("a second hello", "unix", f(HELLO), f(ctl('hello id="2" name="carol" versions="1"')),
     [("refusal", E.ALREADY_NAMED, False)], [error("already-named", id="2")], State.OPEN),
    ("an envelope of a named connection goes to the pump unread", "unix", f(HELLO), f(b"not even xml"),
     [("envelope",)], [], State.OPEN),
    ("a broken frame that only looks like control goes to the pump", "unix", f(HELLO),
     f(f'<ctl:status xmlns:ctl="{CONTROL_NS}"'.encode()), [("envelope",)], [], State.OPEN),
    ("several frames in one read, in order", "unix", f(HELLO), f(envelope(), ctl('status id="2"'), envelope()),
     [("envelope",), ("status", "2"), ("envelope",)], [], State.OPEN),
    ("an oversize frame of a named connection", "unix", f(HELLO), struct.pack(">I", 9000) + b"x" * 9000 + f(envelope()),
     [("refusal", E.TOO_LARGE, False), ("envelope",)], [("huh", "too-large")], State.OPEN),
    ("the input ends mid-frame", "unix", f(HELLO), struct.pack(">I", 100) + b"<env:", [], [], State.OPEN),
    # a TCP connection: one hello with the token, or one refusal and the end
    ("tcp hello with the token", "tcp", b"", f(TCP_HELLO), [("hello", "alice", 1, "1")], [WELCOME], State.OPEN),
    ("a wrong token", "tcp", b"", f(ctl('hello id="1" name="alice" versions="1" token="guess"')),
     [("refusal", E.BAD_TOKEN, True), ("closed",)], [error("bad-token", id="1", close="true")], State.CLOSED),
    ("no token", "tcp", b"", f(HELLO),
     [("refusal", E.BAD_TOKEN, True), ("closed",)], [error("bad-token", id="1", close="true")], State.CLOSED),
    ("a non-ASCII token", "tcp", b"", f(ctl('hello id="1" name="alice" versions="1" token="s3cr\u00e9t"')),
     [("refusal", E.BAD_TOKEN, True), ("closed",)], [error("bad-token", id="1", close="true")], State.CLOSED),
    ("an envelope before the hello", "tcp", b"", f(envelope()),
     [("refusal", E.UNAUTHORIZED, True), ("closed",)], [error("unauthorized", close="true")], State.CLOSED),
    ("a request before the hello", "tcp", b"", f(ctl('status id="2"')),
     [("refusal", E.UNAUTHORIZED, True), ("closed",)], [error("unauthorized", id="2", close="true")], State.CLOSED),
    ("a frame over 4 KiB before the hello: refused from its header", "tcp", b"", struct.pack(">I", 4097),
     [("refusal", E.TOO_LARGE, True), ("closed",)], [error("too-large", close="true")], State.CLOSED),
    ("an unreadable frame before the hello", "tcp", b"", f(b"\xff\xfe garbage"),
     [("refusal", E.MALFORMED, True), ("closed",)], [error("malformed", close="true")], State.CLOSED),
    ("the token right, the name not available: refused and closed", "tcp", b"",
     f(ctl('hello id="1" name="echo" versions="1" token="s3cret"')),
     [("refusal", E.FORBIDDEN_SENDER, True), ("closed",)], [error("forbidden-sender", id="1", close="true")],
     State.CLOSED),
    ("only one answer: what follows a refusal is never read", "tcp", b"", f(envelope(), TCP_HELLO),
     [("refusal", E.UNAUTHORIZED, True), ("closed",)], [error("unauthorized", close="true")], State.CLOSED),
    ("a hello and a 6 KB envelope in one read: the envelope is judged after authentication", "tcp", b"",
     f(TCP_HELLO, envelope(payload=f"<Echo><Text>{'x' * 6000}</Text></Echo>")),
     [("hello", "alice", 1, "1"), ("envelope",)], [WELCOME], State.OPEN),
]


@pytest.mark.parametrize("row,side,prelude,data,events,frames,state", SERVER_ROWS, ids=[row[0] for row in SERVER_ROWS])
def test_server_table(row, side, prelude, data, events, frames, state):
    machine = server(side, prelude)
    got, sent = run(machine, data)
    assert [summary(event) for event in got] == events
    assert [said(frame) for frame in sent] == frames
    assert machine.state is state


def test_the_table_takes_every_kind_somewhere_and_says_what_it_refuses():
    assert set(TRANSITIONS) == set(State)
    for state, takes in TRANSITIONS.items():
        if state in (State.CLOSING, State.CLOSED):
            assert takes == {}
        else:
            assert state in NOT_TAKEN


def test_the_welcome_bytes():
    _, sent = run(server("unix"), f(HELLO))
    assert sent == [encode_frame(
        b'<ctl:welcome xmlns:ctl="https://xml-pipeline.org/ns/control/v1" id="1" name="alice" version="1" '
        b'max-frame="8192" conversation-timeout="600"/>')]


def test_a_tcp_peer_hears_only_the_canned_sentence_the_owner_the_reason_too():
    _, tcp = run(server("tcp"), f(ctl('hello id="1" name="alice" versions="1" token="no"')))
    assert tcp == [encode_frame(
        b'<ctl:error xmlns:ctl="https://xml-pipeline.org/ns/control/v1" id="1" code="bad-token" close="true">'
        + CANNED[E.BAD_TOKEN].encode() + b"</ctl:error>")]
    _, unix = run(server("unix"), f(ctl('hello id="1" name="echo" versions="1"')))
    assert b"that is a listener" in unix[0]


def test_a_huh_is_an_envelope_from_system_with_the_canned_text_only():
    events, sent = run(server("unix"), f(envelope("echo")))
    root = etree.fromstring(sent[0][4:])
    assert root.find(f"{{{ENVELOPE_NS}}}meta/{{{ENVELOPE_NS}}}from").text == "system"
    assert root.find("huh").text == CANNED[E.FORBIDDEN_SENDER]
    assert events[0].raw == envelope("echo")  # the refused bytes, for the dead letters


def test_nothing_of_an_unauthenticated_connection_is_kept_for_dead_letters():
    events, _ = run(server("tcp"), f(envelope()))
    assert events[0].raw is None
    events, _ = run(server("tcp"), struct.pack(">I", 1 << 20))
    assert events[0].raw is None


def test_before_authentication_one_small_frame_is_all_that_is_held():
    machine = server("tcp")
    assert machine.read_room == 4096 + 4
    machine.receive_data(struct.pack(">I", 4096) + b"<" * 100, 0.0)
    assert machine.next_event() is NEED_DATA and machine.read_room == 4096 + 4 - 104
    named = server("tcp", f(TCP_HELLO))
    assert named.read_room == SETTINGS.max_buffer


def test_after_a_closing_refusal_input_is_discarded():
    machine = server("tcp")
    run(machine, f(envelope()))
    machine.receive_data(f(TCP_HELLO), 1.0)
    assert machine.buffered == 0 and machine.read_room == 0
    assert isinstance(machine.next_event(), Closed)


def test_the_input_ending_mid_frame_is_reported():
    machine = server("unix", f(HELLO))
    machine.receive_data(struct.pack(">I", 100) + b"<env:", 1.0)
    assert machine.next_event() is NEED_DATA
    machine.receive_data(b"", 2.0)
    assert machine.next_event() == Closed(mid_frame=True)


def test_server_initiated_refusals():
    machine = server("unix", f(HELLO))
    shutdown = machine.refuse_envelope(E.SHUTDOWN, "stopping", envelope(), 1)
    assert (shutdown.code, shutdown.close, said(shutdown.frame)) == (E.SHUTDOWN, False, ("huh", "shutdown"))
    assert machine.state is State.OPEN
    full = server("tcp").refuse_connection(E.TOO_MANY_CONNECTIONS, "256 open")
    assert said(full.frame) == error("too-many-connections", close="true") and full.close
    again = machine.refuse_connection(E.INTERNAL, "a bug")
    assert said(again.frame) == error("internal", close="true") and machine.state is State.CLOSING
    assert machine.refuse_connection(E.SHUTDOWN, "stopping").frame == b""  # the last word was said


def test_answers_echo_the_request_id():
    machine = server("unix", f(HELLO))
    (request,), _ = run(machine, f(ctl('status id="req-42"')))
    answer = machine.answer(request, {"ok": True})
    assert said(answer) == ("result", {"id": "req-42", "verb": "status"})
    assert etree.fromstring(answer[4:]).text == '{"ok": true}'


# ---------------------------------------------------------------------------- time
def test_hello_deadline():
    for side in ("unix", "tcp"):
        machine = server(side, now=100.0)
        assert machine.next_deadline() == 110.0
        assert not machine.time_passed(109.9)
        assert machine.time_passed(110.0)
        refusal = machine.next_event()
        assert (refusal.code, refusal.close) == (E.HELLO_TIMEOUT, True)
        assert said(refusal.frame) == error("hello-timeout", close="true")
        assert isinstance(machine.next_event(), Closed)


def test_a_trickled_hello_is_still_cut_at_the_hello_deadline():
    machine = server("tcp", now=0.0)
    data = f(TCP_HELLO)
    for i, byte in enumerate(data[:-1]):
        machine.receive_data(bytes([byte]), i * 0.1)  # a byte every 100 ms: always active
        assert machine.next_event() is NEED_DATA
        if machine.time_passed(i * 0.1):
            break
    assert machine.next_event().code == E.HELLO_TIMEOUT


def test_frame_deadline_runs_from_the_first_byte_of_a_frame():
    machine = server("unix", f(HELLO), now=0.0)
    machine.receive_data(struct.pack(">I", 100) + b"<env:", 5.0)
    assert machine.next_event() is NEED_DATA
    assert machine.next_deadline() == 35.0
    machine.receive_data(b"m", 30.0)  # trickling does not move it
    assert not machine.time_passed(34.9)
    assert machine.time_passed(35.0)
    assert machine.next_event().code == E.FRAME_TIMEOUT


def test_frame_deadline_does_not_run_while_the_server_is_behind():
    machine = server("unix", f(HELLO), now=0.0)
    machine.receive_data(f(envelope()) + struct.pack(">I", 100) + b"<", 1.0)  # one complete frame, one started
    assert not machine.time_passed(500.0)  # the server has not taken the complete one: the client owes nothing
    assert isinstance(machine.next_event(), Envelope)
    assert machine.next_event() is NEED_DATA
    assert not machine.time_passed(501.0)  # the started frame's clock starts now
    assert not machine.time_passed(530.9)
    assert machine.time_passed(531.0)
    assert machine.next_event().code == E.FRAME_TIMEOUT


def test_idle_deadline_counts_traffic_both_ways():
    machine = server("unix", f(HELLO), now=0.0)
    assert machine.next_deadline() == 3600.0
    machine.send_envelope(envelope("echo"))  # a reply went out ...
    assert not machine.time_passed(3000.0)  # ... noticed at the next check
    assert not machine.time_passed(6599.0)
    assert machine.time_passed(6600.0)
    refusal = machine.next_event()
    assert (refusal.code, refusal.close) == (E.IDLE_TIMEOUT, True)


def test_no_deadline_once_closed():
    machine = server("tcp")
    run(machine, f(envelope()))
    assert machine.next_deadline() is None and not machine.time_passed(1e9)


# ---------------------------------------------------------------------------- the client side
def client(token: str | None = None) -> ClientConnection:
    return ClientConnection("alice", xml=XML, token=token)


def welcome(request_id: str = "1", version: str = "1", name: str = "alice") -> bytes:
    return ctl(f'welcome id="{request_id}" name="{name}" version="{version}" max-frame="1048576" '
               'conversation-timeout="600"')


def take(machine: ClientConnection, data: bytes) -> list:
    machine.receive_data(data)
    events = []
    while (event := machine.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, Closed):
            break
    return events


def test_client_hello_bytes():
    request_id, data = client(token="s3cret").hello()
    assert request_id == "1"
    assert data == encode_frame(b'<ctl:hello xmlns:ctl="https://xml-pipeline.org/ns/control/v1" id="1" '
                                b'name="alice" versions="1 2" token="s3cret"/>')


# (row, frames in after the hello, events out, state after)
CLIENT_ROWS = [
    ("welcomed", [welcome()], [Welcome("1", "alice", 1, 1 << 20, 600.0)], ClientState.OPEN),
    ("the hello refused", [ctl('error id="1" code="forbidden-sender"')],
     [Refusal("forbidden-sender", "", False, request_id="1"), Closed()], ClientState.CLOSED),
    ("the connection refused", [ctl('error code="too-many-connections" close="true"')],
     [Refusal("too-many-connections", "", True), Closed()], ClientState.CLOSED),
    ("a welcome for a version not offered", [welcome(version="9")],
     [ProtocolError("a welcome with version '9' and max-frame '1048576'"), Closed()], ClientState.CLOSED),
    ("a welcome for someone else", [welcome(name="mallory")],
     [ProtocolError("a welcome naming 'mallory', not 'alice'"), Closed()], ClientState.CLOSED),
    ("an answer to no request", [ctl('result id="9" verb="status"')],
     [ProtocolError("a result answering no request (id '9')"), Closed()], ClientState.CLOSED),
    ("an envelope before the welcome", [envelope("echo")],
     [ProtocolError("an envelope while greeting"), Closed()], ClientState.CLOSED),
    ("a frame kind of a later version is no answer", [ctl('ack seq="1"'), welcome()],
     [Welcome("1", "alice", 1, 1 << 20, 600.0)], ClientState.OPEN),
]


@pytest.mark.parametrize("row,frames,events,state", CLIENT_ROWS, ids=[row[0] for row in CLIENT_ROWS])
def test_client_table(row, frames, events, state):
    machine = client()
    machine.hello()
    assert take(machine, f(*frames)) == events
    assert machine.state is state


def test_client_requests_are_matched_by_id_whatever_the_order():
    machine = client()
    machine.hello()
    take(machine, f(welcome()))
    first, data = machine.request("status")
    assert data == encode_frame(b'<ctl:status xmlns:ctl="https://xml-pipeline.org/ns/control/v1" id="2"/>')
    second, _ = machine.request("deadletters", limit="5")
    events = take(machine, f(ctl('ack seq="1"'),  # never taken for an answer
                             ctl(f'error id="{second}" code="bad-argument"'),
                             f'<ctl:result xmlns:ctl="{CONTROL_NS}" id="{first}" verb="status">{{"a": 1}}</ctl:result>'
                             .encode(), envelope("echo")))
    assert events == [Refusal("bad-argument", "", False, request_id=second), Answer(first, "status", {"a": 1}),
                      Envelope(envelope("echo"))]
    assert machine.pending == frozenset() and machine.ignored == 1


def test_client_misuse_is_a_local_error():
    machine = client()
    with pytest.raises(LocalProtocolError):
        machine.request("status")
    with pytest.raises(LocalProtocolError):
        machine.send_envelope(envelope())
    machine.hello()
    with pytest.raises(LocalProtocolError):
        machine.hello()


def test_client_skips_and_counts_a_frame_larger_than_it_takes():
    machine = ClientConnection("alice", xml=XML, max_frame=len(welcome()))
    machine.hello()
    events = take(machine, struct.pack(">I", 400) + b"x" * 400 + f(welcome()))
    assert [type(event) for event in events] == [Welcome] and machine.dropped == 1


# ---------------------------------------------------------------------------- both, no socket
class Pair:
    """A client machine and a server machine, with the bytes carried by hand."""

    def __init__(self, side: str = "unix") -> None:
        self.client = client(token="s3cret" if side == "tcp" else None)
        self.server = server(side)

    def to_server(self, data: bytes) -> list:
        events, sent = run(self.server, data)
        for frame in sent:
            self.client.receive_data(frame)
        return events

    def to_client(self, data: bytes) -> list:
        self.client.receive_data(data)
        return self.client_events()

    def client_events(self) -> list:
        events = []
        while (event := self.client.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Closed):
                break
        return events


@pytest.mark.parametrize("side", ["unix", "tcp"])
def test_a_client_machine_and_a_server_machine_talk(side):
    pair = Pair(side)
    _, hello = pair.client.hello()
    assert [summary(event) for event in pair.to_server(hello)] == [("hello", "alice", 2, "1")]
    assert pair.client_events() == [Welcome("1", "alice", 2, 8192, 600.0)]

    request_id, status = pair.client.request("status")
    (request,) = pair.to_server(status)
    assert pair.to_client(pair.server.answer(request, {"accepted": 3})) == [Answer(request_id, "status", {"accepted": 3})]

    bad_id, bad = pair.client.request("deadletters", limit="\u00b2")
    assert [summary(event) for event in pair.to_server(bad)] == [("refusal", E.BAD_ARGUMENT, False)]
    (refusal,) = pair.client_events()
    assert (refusal.request_id, refusal.code) == (bad_id, "bad-argument")

    cancel_id, cancel = pair.client.request("cancel", thread=THREAD)
    (request,) = pair.to_server(cancel)
    assert request == CancelRequest(cancel_id, THREAD)

    message = envelope("alice")
    seq, data = pair.client.send_envelope(message)
    assert pair.to_server(data) == [Envelope(message, seq)] and seq == 1
    assert pair.to_client(pair.server.settle(seq, pair.server.ack(seq, THREAD, "m-1"))) == [Ack(1, THREAD, "m-1")]
    reply = envelope("echo")
    assert pair.to_client(pair.server.send_envelope(reply)) == [Envelope(reply)]
    assert pair.client.state is ClientState.OPEN and pair.server.state is State.OPEN


def test_a_wrong_token_ends_both_machines():
    pair = Pair("tcp")
    pair.client._token = "wrong"
    _, hello = pair.client.hello()
    pair.to_server(hello)
    (refusal, closed) = pair.client_events()
    assert (refusal.code, refusal.request_id, refusal.close) == ("bad-token", "1", True)
    assert pair.client.state is ClientState.CLOSED and pair.server.state is State.CLOSED


def test_a_server_speaking_only_a_later_version_is_refused_by_version():
    pair = Pair("unix")
    pair.server = ServerConnection(dataclasses.replace(SETTINGS, versions=(3,)), token=None,
                                   name_problem=name_problem, xml=XML, now=0.0)
    _, hello = pair.client.hello()
    pair.to_server(hello)
    (refusal, _closed) = pair.client_events()
    assert refusal.code == "unsupported-version" and pair.client.state is ClientState.CLOSED


def test_every_connection_refusal_code_has_a_row():
    in_tables = {event[1] for row in SERVER_ROWS for event in row[4] if event[0] == "refusal"}
    elsewhere = {E.HELLO_TIMEOUT, E.FRAME_TIMEOUT, E.IDLE_TIMEOUT,  # the time tests
                 E.TOO_MANY_CONNECTIONS, E.SHUTDOWN, E.INTERNAL}  # test_server_initiated_refusals
    connection_codes = {E.BAD_TOKEN, E.BAD_ARGUMENT, E.UNAUTHORIZED, E.TOO_MANY_CONNECTIONS, E.HELLO_TIMEOUT,
                        E.FRAME_TIMEOUT, E.IDLE_TIMEOUT, E.ALREADY_NAMED, E.UNKNOWN_VERB, E.UNSUPPORTED_VERSION,
                        E.TOO_LARGE, E.MALFORMED, E.FORBIDDEN_SENDER, E.SHUTDOWN, E.INVALID_ENVELOPE,
                        E.FORBIDDEN_DTD}
    assert connection_codes <= in_tables | elsewhere


# ---------------------------------------------------------------------------- acks (version 2)
HELLO_V2 = ctl('hello id="1" name="alice" versions="1 2"')


def test_envelopes_are_numbered_and_outcomes_go_out_in_their_order():
    machine = server("unix", f(HELLO_V2))
    assert machine.acks and machine.version == ACKS_SINCE
    events, _ = run(machine, f(envelope(), envelope(), envelope()))
    assert [event.seq for event in events] == [1, 2, 3] and machine.unsettled == 3
    third = machine.settle(3, machine.ack(3, THREAD, "m-3"))
    assert third == b"" and machine.unsettled == 3  # held back: 1 and 2 have not gone out
    second = build_huh(to="alice", thread=THREAD, code="no-route", message="x", seq=2)
    assert machine.settle(2, encode_frame(second)) == b""
    out = machine.settle(1, machine.ack(1, THREAD, "m-1"))
    frames = []
    while out:
        (length,) = struct.unpack(">I", out[:4])
        frames.append(out[:4 + length])
        out = out[4 + length:]
    assert [said(frame)[0] for frame in frames] == ["ack", "huh", "ack"]
    assert [said(frame)[1]["seq"] for frame in frames if said(frame)[0] == "ack"] == ["1", "3"]
    assert machine.unsettled == 0


def test_an_envelope_is_settled_once_and_only_if_taken():
    machine = server("unix", f(HELLO_V2))
    (envelope_event,) = run(machine, f(envelope()))[0]
    machine.settle(envelope_event.seq, b"")
    with pytest.raises(LocalProtocolError):
        machine.settle(envelope_event.seq, b"")
    with pytest.raises(LocalProtocolError):
        machine.settle(2, b"")  # never taken


def test_a_frame_the_machine_refuses_takes_its_number_too():
    machine = server("unix", f(HELLO_V2))
    events, sent = run(machine, struct.pack(">I", 9000) + b"x" * 9000 + f(envelope()))
    refusal, taken = events
    assert refusal.seq == 1 and taken.seq == 2
    assert said(machine.settle(refusal.seq, refusal.frame)) == ("huh", "too-large")


def test_a_version_1_client_gets_no_acks():
    machine = server("unix", f(HELLO))
    (taken,) = run(machine, f(envelope()))[0]
    assert not machine.acks and machine.ack(taken.seq, THREAD, "m") == b""
    assert machine.settle(taken.seq, machine.ack(taken.seq, THREAD, "m")) == b""


def test_the_client_takes_acks_only_for_envelopes_it_sent():
    pair = Pair("unix")
    _, hello = pair.client.hello()
    pair.to_server(hello)
    pair.client_events()
    seq, data = pair.client.send_envelope(envelope())
    pair.to_server(data)
    (event,) = pair.to_client(encode_frame(ctl(f'ack seq="{seq}" thread="{THREAD}" message="m"')))
    assert event == Ack(seq, THREAD, "m")
    (violation, *_) = pair.to_client(encode_frame(ctl(f'ack seq="{seq + 5}" thread="{THREAD}" message="m"')))
    assert isinstance(violation, ProtocolError)


def test_hops_are_taken_only_for_an_answered_watch():
    pair = Pair("unix")
    _, hello = pair.client.hello()
    pair.to_server(hello)
    pair.client_events()
    early = encode_frame(ctl('hop watch="2"')[:-2] + b'>{"n": 1}</ctl:hop>')
    assert pair.to_client(early) == [] and pair.client.ignored == 1  # no watch asked yet: a later version's frame
    watch_id, watch = pair.client.request("watch")
    (request,) = pair.to_server(watch)
    assert request.verb == "watch" and request.request_id == watch_id
    assert pair.to_client(pair.server.answer(request, {"watching": True})) == [Answer(watch_id, "watch", {"watching": True})]
    (hop,) = pair.to_client(pair.server.hop(request, {"n": 2}))
    assert hop == Hop(watch_id, {"n": 2})
