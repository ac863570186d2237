"""The connection protocol: what a client and the server say to each other, as pure state machines.

Sans-IO, like h11: no sockets, no asyncio, no clock. Bytes go in (`receive_data`),
events come out (`next_event`, NEED_DATA when it needs more bytes), methods return the
exact bytes to send, and time is an input (`time_passed(now)`, `next_deadline()`). The
server (server.py) and the client (client.py) only move bytes between their sockets
and one of these machines, and between the machine and the pump.

On the wire (DESIGN.md §4), each frame (framing.py) holds an envelope or one control
element (control.py). A request carries an `id` that its answer echoes; nothing else
carries one, so a later frame kind (acks, §14) can never be taken for an answer.

The server side, `ServerConnection`, one per connection. Its states, and what each
takes (TRANSITIONS):

    state            takes                              then         while
    AUTHENTICATING   a hello with the token             OPEN         TCP: not authenticated yet
    UNNAMED          a hello                            OPEN         Unix: no name yet
                     an envelope (its <from> names it)  OPEN
                     a control request                  UNNAMED
    OPEN             an envelope, a control request     OPEN         named
    CLOSING          nothing (input is discarded)                    a refusal closed it
    CLOSED           nothing                                         it is over

- A frame its state does not take is refused with NOT_TAKEN's code for that state
  (`unauthorized` before authentication, `already-named` for a second hello), and a
  frame that cannot be read with what made it unreadable; refusals are events
  (`Refusal`), never exceptions.
- A refusal leaves the state as it is, except one that closes, which leads to
  CLOSING. Before authentication every refusal closes: one answer, then the end.
- Input ending leads, once the frames before it are taken, to CLOSED.
- Deadlines (`time_passed`): the hello (in AUTHENTICATING and UNNAMED: a Unix
  connection may skip the hello, its first envelope then names it), a frame once
  started (in every open state), and idleness (OPEN: nothing received or sent). Neither
  of the last two runs while the server is behind on frames already complete: then the
  client owes nothing. Each refuses with its own code and closes.
- Memory: before authentication a frame may announce at most PRE_AUTH_MAX_FRAME bytes
  (more is refused and the connection closed) and nothing beyond one such frame is
  held; afterwards `max_buffer` bytes (`read_room` tells the server how much it may
  read now).

The client side, `ClientConnection`: IDLE, then GREETING once the hello is sent, OPEN
once welcomed, CLOSED when refused or the input ends. Answers are matched to requests
by id; an answer to no request, or a frame the state does not take, is a
`ProtocolError` event and the machine closes.
"""

from __future__ import annotations

import hmac
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable, ClassVar, Literal, NamedTuple

from lxml import etree

from agentserver import control
from agentserver.codes import ErrorCode, canned
from agentserver.envelope import FROM, MESSAGE, META, build_huh
from agentserver.framing import HEADER, FrameDecoder, Oversize, encode_frame
from agentserver.limits import NAME_PATTERN, Limits
from agentserver.xmlsafe import SafeXml, UnsafeXml

__all__ = [
    "PROTOCOL_VERSIONS", "PRE_AUTH_MAX_FRAME", "CLIENT_MAX_FRAME", "NEED_DATA", "NeedData", "State", "ClientState", "TRANSITIONS",
    "NOT_TAKEN", "ServerSettings", "ServerConnection", "ClientConnection", "LocalProtocolError",
    "Event", "Hello", "Named", "Envelope", "ControlRequest", "StatusRequest", "DeadLettersRequest", "CancelRequest",
    "Refusal", "Closed", "Welcome", "Answer", "ProtocolError", "Ack", "ACKS_SINCE", "WatchRequest", "Hop",
]

PROTOCOL_VERSIONS: tuple[int, ...] = (1, 2)  # what this side speaks; the hello picks the highest in common
ACKS_SINCE = 2  # from this version on, every envelope gets one ack or one <huh>, in order
PRE_AUTH_MAX_FRAME = 4096  # the largest frame a TCP connection may send before it has authenticated
CLIENT_MAX_FRAME = 16 << 20  # the largest frame a client takes from the server by default

_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}\Z")
_COUNT = re.compile(r"[0-9]{1,9}\Z")  # ASCII digits only: str.isdigit() would take "²"
_THREAD = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_VERSION = re.compile(r"[0-9]{1,4}\Z")


class NeedData(Enum):
    NEED_DATA = "need-data"


NEED_DATA = NeedData.NEED_DATA  # next_event(): nothing to report until more bytes arrive


class LocalProtocolError(RuntimeError):
    """This side's own code asked the machine for something its state does not allow (a bug)."""


# ---------------------------------------------------------------------------- events
class Event:
    """Something that happened on the connection. Each kind is a frozen dataclass."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """Server side: a hello was accepted. Take the name, then send `frame` (the welcome)."""

    name: str
    version: int
    request_id: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Named(Event):
    """Server side: the first envelope of a Unix connection named it (that envelope follows)."""

    name: str


@dataclass(frozen=True, slots=True)
class Envelope(Event):
    """An envelope frame: to the pump (server side), or a reply or `<huh>` (client side).
    Server side, `seq` is its number on the connection: `settle` its outcome (an ack or a
    `<huh>`) with that number."""

    data: bytes
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Ack(Event):
    """Client side: the server accepted the envelope numbered `seq` (version 2)."""

    seq: int
    thread: str
    message_id: str


@dataclass(frozen=True, slots=True)
class ControlRequest(Event):
    """Server side: a valid control request; answer it with `ServerConnection.answer`."""

    verb: ClassVar[str]
    request_id: str


@dataclass(frozen=True, slots=True)
class StatusRequest(ControlRequest):
    verb: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class DeadLettersRequest(ControlRequest):
    verb: ClassVar[str] = "deadletters"
    limit: int | None  # the most recent `limit` records; None: all kept


@dataclass(frozen=True, slots=True)
class CancelRequest(ControlRequest):
    verb: ClassVar[str] = "cancel"
    thread: str  # the thread id the client used for the conversation


@dataclass(frozen=True, slots=True)
class WatchRequest(ControlRequest):
    """Send every hop event from now on (`ServerConnection.hop`), after the answer."""

    verb: ClassVar[str] = "watch"


@dataclass(frozen=True, slots=True)
class Hop(Event):
    """Client side: one hop event for the answered `watch` request `request_id`."""

    request_id: str
    data: object


@dataclass(frozen=True, slots=True)
class Refusal(Event):
    """A refusal. Server side: send `frame`, and close the connection after it if `close`;
    `raw` is the refused message frame (None when no message was refused, and before
    authentication). Client side: what the server refused (`request_id`: which request;
    None: a frame or the connection itself)."""

    code: str  # an ErrorCode (a client may hear codes of a newer server)
    reason: str  # the full reason (server side: for the log and dead letters, never for TCP peers)
    close: bool
    frame: bytes = b""
    raw: bytes | None = None
    request_id: str | None = None
    seq: int | None = None  # server side: the refused envelope's number (send `frame` through `settle`)


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The connection is over (the peer closed it, or a refusal did): close the socket."""

    mid_frame: bool = False  # the input ended inside a frame (that frame is lost)


@dataclass(frozen=True, slots=True)
class Welcome(Event):
    """Client side: the server accepted the hello."""

    request_id: str
    name: str
    version: int
    max_frame: int  # the server refuses frames larger than this
    conversation_timeout_s: float  # a conversation is ended after this long


@dataclass(frozen=True, slots=True)
class Answer(Event):
    """Client side: the result of the request `request_id`."""

    request_id: str
    verb: str
    data: object


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    """Client side: the server sent what the protocol does not allow; the machine is closed."""

    reason: str


# ---------------------------------------------------------------------------- the server side
class State(str, Enum):
    AUTHENTICATING = "authenticating"
    UNNAMED = "unnamed"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Kind(str, Enum):
    """What a frame is, as far as the state machine cares."""

    HELLO = "hello"
    ENVELOPE = "envelope"
    REQUEST = "request"  # any other control element (unknown verbs are refused when taken)


# state -> {kind of frame: the state once it is taken}. What is missing is refused.
TRANSITIONS: dict[State, dict[Kind, State]] = {
    State.AUTHENTICATING: {Kind.HELLO: State.OPEN},
    State.UNNAMED: {Kind.HELLO: State.OPEN, Kind.ENVELOPE: State.OPEN, Kind.REQUEST: State.UNNAMED},
    State.OPEN: {Kind.ENVELOPE: State.OPEN, Kind.REQUEST: State.OPEN},
    State.CLOSING: {},
    State.CLOSED: {},
}

# the code a frame gets in a state that does not take it
NOT_TAKEN: dict[State, ErrorCode] = {
    State.AUTHENTICATING: ErrorCode.UNAUTHORIZED,
    State.UNNAMED: ErrorCode.INVALID_ENVELOPE,  # (every kind is taken there)
    State.OPEN: ErrorCode.ALREADY_NAMED,  # a second hello
}

_LIVE = (State.AUTHENTICATING, State.UNNAMED, State.OPEN)
_GREETING = (State.AUTHENTICATING, State.UNNAMED)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every server connection is held to (from `limits:`)."""

    max_frame: int  # the largest frame taken after authentication
    max_buffer: int  # the most bytes one connection may have buffered
    hello_timeout_s: float
    frame_timeout_s: float
    idle_timeout_s: float
    conversation_timeout_s: float  # announced in the welcome
    versions: tuple[int, ...] = PROTOCOL_VERSIONS

    @classmethod
    def from_limits(cls, limits: Limits) -> "ServerSettings":
        """A frame must fit the connection buffer, so the frame limit is the smaller of the two."""
        max_buffer = limits.max_connection_buffer_bytes
        return cls(max_frame=max(1, min(limits.max_message_bytes, max_buffer - HEADER.size)), max_buffer=max_buffer,
                   hello_timeout_s=limits.hello_timeout_s, frame_timeout_s=limits.frame_timeout_s,
                   idle_timeout_s=limits.idle_timeout_s, conversation_timeout_s=limits.conversation_timeout_s)

    @property
    def pre_auth_max_frame(self) -> int:
        return min(PRE_AUTH_MAX_FRAME, self.max_frame)


class _Arrived(NamedTuple):
    """A frame, classified: its kind, its control element or envelope root if it was read,
    or why it could not be read."""

    kind: Kind | None  # None: unreadable
    control: control.ControlFrame | None = None
    root: etree._Element | None = None
    problem: UnsafeXml | None = None


NameProblem = Callable[[str], "str | None"]


class ServerConnection:
    """The server side of one connection (see the module docstring for its states).

    `token`: the bytes a TCP connection's hello must carry (None for a Unix connection,
    whose peer is the owner; such a connection is `trusted` and is told full reasons).
    `name_problem(name)`: why a well-formed name is not available (None: it is).
    `xml`: the parser for frames read before the connection has a name, and for control
    frames (envelopes of a named connection are left to the pump)."""

    def __init__(self, settings: ServerSettings, *, token: bytes | None, name_problem: NameProblem, xml: SafeXml,
                 now: float) -> None:
        self.settings = settings
        self.state = State.AUTHENTICATING if token is not None else State.UNNAMED
        self.trusted = token is None
        self.authenticated = token is None  # a Unix connection is; a TCP one once its hello is accepted
        self.name: str | None = None
        self.version: int | None = None
        self._token = token
        self._name_problem = name_problem
        self._xml = xml
        self._decoder = FrameDecoder(settings.max_frame if self.trusted else settings.pre_auth_max_frame)
        self._events: deque[Event] = deque()
        self._eof = False
        self._opened_at = now
        self._last_active = now  # the last bytes received, or (see time_passed) sent
        self._sent = False  # something was sent since the last time check
        self._frame_started: float | None = None  # when the frame being received started (None: unknown or none)
        self._seq = 0  # envelopes taken so far (their numbers: 1, 2, ...)
        self._next_out = 1  # the envelope whose outcome goes out next
        self._outcomes: dict[int, bytes] = {}  # outcomes that came early, waiting for the ones before

    # ------------------------------------------------------------------ memory
    @property
    def max_buffer(self) -> int:
        """The most bytes this connection may hold now (one small frame before authentication)."""
        if not self.authenticated:
            return self.settings.pre_auth_max_frame + HEADER.size
        return self.settings.max_buffer

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    @property
    def mid_frame(self) -> bool:
        """Bytes of a frame not yet complete are held (or an oversize body is being skipped)."""
        return self._decoder.mid_frame and not self._decoder.frame_ready

    @property
    def read_room(self) -> int:
        """How many bytes the server may read for this connection now (0: stop reading)."""
        if self.state not in _LIVE or self._eof:
            return 0
        return max(0, self.max_buffer - self._decoder.buffered)

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the peer; b"" when its input ended. Ignored once the connection is closing."""
        if self.state not in _LIVE or self._eof:
            return
        if not data:
            self._eof = True
            return
        self._last_active = now
        self._decoder.receive(data)
        if self._frame_started is None and self.mid_frame:
            self._frame_started = now

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """The next event, or NEED_DATA. Frames are taken one per call, in order."""
        if self._events:
            return self._events.popleft()
        if self.state is State.CLOSING or self.state is State.CLOSED:
            self.state = State.CLOSED
            return Closed()
        item = self._decoder.next_event()
        if item is None:
            if not self._eof:
                return NEED_DATA
            self.state = State.CLOSED
            return Closed(mid_frame=self._decoder.mid_frame)
        self._frame_started = None  # the next frame's clock starts when it is seen (time_passed, receive_data)
        if isinstance(item, Oversize):
            return self._refuse(ErrorCode.TOO_LARGE, f"frame of {item.length} bytes announced, "
                                f"limit {self._decoder.max_frame}", raw=b"")
        return self._take(item.data)

    # ------------------------------------------------------------------ time
    def time_passed(self, now: float) -> bool:
        """The clock says `now`. True if a deadline passed: a closing `Refusal` is then the
        next event."""
        if self.state not in _LIVE:
            return False
        if self._sent:
            self._last_active, self._sent = now, False
        expired = self._expired(now)
        if expired is None:
            return False
        code, reason = expired
        self._events.append(self._refuse(code, reason, close=True))
        return True

    def next_deadline(self) -> float | None:
        """The earliest time at which `time_passed` may refuse (None: no deadline now). A
        frame whose start was not seen (it followed a frame just taken) gets its clock at the
        next check, so check at least every second or so."""
        if self.state not in _LIVE:
            return None
        settings = self.settings
        deadlines = []
        if self.state in _GREETING:
            deadlines.append(self._opened_at + settings.hello_timeout_s)
        if self._frame_started is not None:
            deadlines.append(self._frame_started + settings.frame_timeout_s)
        if self.state is State.OPEN:
            deadlines.append(self._last_active + settings.idle_timeout_s)
        return min(deadlines) if deadlines else None

    def _expired(self, now: float) -> tuple[ErrorCode, str] | None:
        settings = self.settings
        if self.state in _GREETING and now >= self._opened_at + settings.hello_timeout_s:
            return ErrorCode.HELLO_TIMEOUT, f"no hello within {settings.hello_timeout_s:g} s"
        if not self.mid_frame:  # nothing started, or the server is behind on complete frames
            self._frame_started = None
        elif self._frame_started is None:
            self._frame_started = now
        elif now >= self._frame_started + settings.frame_timeout_s:
            return ErrorCode.FRAME_TIMEOUT, f"a frame was not finished within {settings.frame_timeout_s:g} s"
        behind = self._decoder.frame_ready  # frames the server has not taken: the connection is not idle
        if self.state is State.OPEN and not behind and now >= self._last_active + settings.idle_timeout_s:
            return ErrorCode.IDLE_TIMEOUT, f"nothing received or sent for {settings.idle_timeout_s:g} s"
        return None

    # ------------------------------------------------------------------ output
    @property
    def acks(self) -> bool:
        """The client speaks a version with acks: every envelope gets one ack or one `<huh>`."""
        return self.version is not None and self.version >= ACKS_SINCE

    def ack(self, seq: int, thread: str, message_id: str) -> bytes:
        """The frame acking envelope `seq` (empty for a client that takes no acks); send it through `settle`."""
        return encode_frame(control.ack(seq, thread, message_id)) if self.acks else b""

    def settle(self, seq: int, frame: bytes) -> bytes:
        """The outcome of envelope `seq` (an ack, a `<huh>`, or b"" when the client is told
        nothing): returns the bytes to send now. Outcomes go out in the order the envelopes
        came, whatever order they are settled in; each envelope has exactly one."""
        if seq < self._next_out or seq in self._outcomes or seq > self._seq:
            raise LocalProtocolError(f"envelope {seq} settled twice, or never taken")
        self._outcomes[seq] = frame
        out = []
        while self._next_out in self._outcomes:
            out.append(self._outcomes.pop(self._next_out))
            self._next_out += 1
        data = b"".join(out)
        if data:
            self._sent = True
        return data

    @property
    def unsettled(self) -> int:
        """Envelopes taken whose outcome has not gone out yet."""
        return self._seq - self._next_out + 1

    def answer(self, request: ControlRequest, data: object) -> bytes:
        """The bytes answering `request` with `data` (JSON)."""
        self._sent = True
        return encode_frame(control.result(request.request_id, request.verb, data))

    def hop(self, request: WatchRequest, data: object) -> bytes:
        """The bytes of one hop event for an answered `watch` request."""
        self._sent = True
        return encode_frame(control.hop(request.request_id, data))

    def send_envelope(self, data: bytes) -> bytes:
        """The bytes carrying one envelope (a reply or a `<huh>` from the pump) to the client."""
        self._sent = True
        return encode_frame(data)

    def refuse_envelope(self, code: ErrorCode, reason: str, raw: bytes, seq: int) -> Refusal:
        """The server refuses envelope `seq`, which it took (the pump is shutting down)."""
        return self._refuse(code, reason, raw=raw, seq=seq)

    def refuse_connection(self, code: ErrorCode, reason: str) -> Refusal:
        """The server ends the connection (too many connections, its own failure)."""
        return self._refuse(code, reason, close=True)

    # ------------------------------------------------------------------ frames
    def _take(self, data: bytes) -> Event:
        arrived = self._classify(data)
        if arrived.kind is None:
            assert arrived.problem is not None
            return self._refuse(arrived.problem.code, f"unreadable frame: {arrived.problem.detail}", raw=data)
        then = TRANSITIONS[self.state].get(arrived.kind)
        if then is None:
            code = NOT_TAKEN[self.state]
            request_id = arrived.control.attrs.get("id") if arrived.control is not None else None
            return self._refuse(code, f"a {arrived.kind.value} frame is not taken while {self.state.value}",
                                request_id=request_id if _valid_id(request_id) else None,
                                raw=data if arrived.kind is Kind.ENVELOPE else None)
        if arrived.kind is Kind.HELLO:
            assert arrived.control is not None
            return self._hello(arrived.control, then)
        if arrived.kind is Kind.REQUEST:
            assert arrived.control is not None
            return self._request(arrived.control, then)
        return self._envelope(data, arrived.root, then)

    def _classify(self, data: bytes) -> _Arrived:
        """Before a connection has a name every frame is read here; afterwards only those that
        may be control frames (an envelope goes to the pump unread, and so does a frame that
        only looked like a control frame)."""
        if self.state is State.OPEN:
            if not control.is_control(data):
                return _Arrived(Kind.ENVELOPE)
            try:
                root = self._xml.parse(data)
            except (UnsafeXml, etree.XMLSyntaxError):
                return _Arrived(Kind.ENVELOPE)
        else:
            try:
                root = self._xml.parse(data)
            except UnsafeXml as exc:
                return _Arrived(None, problem=exc)
            except etree.XMLSyntaxError as exc:
                return _Arrived(None, problem=UnsafeXml(ErrorCode.MALFORMED, str(exc)))
        frame = control.read_control(root)
        if frame is None:
            return _Arrived(Kind.ENVELOPE, root=root)
        return _Arrived(Kind.HELLO if frame.kind == "hello" else Kind.REQUEST, control=frame)

    def _hello(self, frame: control.ControlFrame, then: State) -> Event:
        attrs = frame.attrs
        request_id = attrs.get("id")
        if not _valid_id(request_id):
            return self._refuse(ErrorCode.BAD_ARGUMENT, "a hello needs an id (1-64 of A-Z a-z 0-9 . _ : -)")
        assert request_id is not None
        if self._token is not None and not _token_matches(attrs.get("token"), self._token):
            reason = "wrong token" if "token" in attrs else "missing token"
            return self._refuse(ErrorCode.BAD_TOKEN, reason, request_id=request_id, close=True)
        offered = _versions(attrs.get("versions"))
        if offered is None:
            return self._refuse(ErrorCode.BAD_ARGUMENT, "versions must be protocol versions (ASCII digits) "
                                "separated by spaces", request_id=request_id)
        common = set(offered) & set(self.settings.versions)
        if not common:
            return self._refuse(ErrorCode.UNSUPPORTED_VERSION, f"offered {sorted(offered)}; this server speaks "
                                f"{list(self.settings.versions)}", request_id=request_id, close=True)
        name = attrs.get("name", "")
        problem = self._check_name(name)
        if problem is not None:
            return self._refuse(ErrorCode.FORBIDDEN_SENDER, f"the name {name!r} is not available: {problem}",
                                request_id=request_id)
        self.version = max(common)
        self.authenticated = True
        self._take_name(name, then)
        settings = self.settings
        self._sent = True
        welcome = control.welcome(request_id, name, self.version, settings.max_frame, settings.conversation_timeout_s)
        return Hello(name, self.version, request_id, encode_frame(welcome))

    def _request(self, frame: control.ControlFrame, then: State) -> Event:
        request_id = frame.attrs.get("id")
        if not _valid_id(request_id):
            return self._refuse(ErrorCode.BAD_ARGUMENT, f"a {frame.kind} request needs an id "
                                "(1-64 of A-Z a-z 0-9 . _ : -)")
        assert request_id is not None
        reader = _REQUESTS.get(frame.kind)
        if reader is None:
            return self._refuse(ErrorCode.UNKNOWN_VERB, f"unknown control verb {frame.kind!r}", request_id=request_id)
        try:
            event = reader(request_id, frame.attrs)
        except _BadArgument as exc:
            return self._refuse(ErrorCode.BAD_ARGUMENT, str(exc), request_id=request_id)
        self.state = then
        return event

    def _envelope(self, data: bytes, root: etree._Element | None, then: State) -> Event:
        if self.state is State.OPEN:
            self._seq += 1
            return Envelope(data, self._seq)
        assert root is not None  # read by _classify before the connection had a name
        sender = _sender(root)
        if not sender:
            return self._refuse(ErrorCode.INVALID_ENVELOPE, "the first envelope has no <from>", raw=data)
        problem = self._check_name(sender)
        if problem is not None:
            return self._refuse(ErrorCode.FORBIDDEN_SENDER, f"the connection may not be named {sender!r}: {problem}",
                                raw=data)
        self._take_name(sender, then)
        self._seq += 1
        self._events.append(Envelope(data, self._seq))
        return Named(sender)

    def _check_name(self, name: str) -> str | None:
        if not NAME_PATTERN.match(name):
            return "not a valid name (letters, digits, _ . -; starting with a letter or _)"
        return self._name_problem(name)

    def _take_name(self, name: str, then: State) -> None:
        self.name = name
        self.state = then
        self._decoder.max_frame = self.settings.max_frame

    def _refuse(self, code: ErrorCode, reason: str, *, close: bool = False, request_id: str | None = None,
                raw: bytes | None = None, seq: int | None = None) -> Refusal:
        """A refusal event and its frame: a `<huh>` for a message frame of an authenticated
        connection (numbered like the envelopes: its frame goes out through `settle`), a
        control error otherwise. Closing ones end the connection (CLOSING)."""
        if self.state not in _LIVE:  # the last word was said: nothing more is sent
            return Refusal(code, reason, True, b"", None, request_id)
        pre_auth = not self.authenticated
        close = close or pre_auth
        if pre_auth:
            raw = None  # nothing of an unauthenticated connection is recorded
        message = f"{canned(code)} ({reason})" if self.trusted else canned(code)
        if raw is not None and request_id is None and not close:
            if seq is None:  # a message frame the machine refuses itself: it takes its number
                self._seq += 1
                seq = self._seq
            frame = build_huh(to=self.name or "client", thread=None, code=code, message=canned(code), seq=seq)
        else:
            seq = None
            frame = control.error(code, message, request_id=request_id, close=close)
        if close:
            self.state = State.CLOSING
        self._sent = True
        return Refusal(code, reason, close, encode_frame(frame), raw, request_id, seq)


class _BadArgument(ValueError):
    """An argument of a control request is not valid (the message says which and why)."""


def _status(request_id: str, attrs: dict[str, str]) -> ControlRequest:
    return StatusRequest(request_id)


def _deadletters(request_id: str, attrs: dict[str, str]) -> ControlRequest:
    limit = attrs.get("limit")
    if limit is None:
        return DeadLettersRequest(request_id, None)
    if not _COUNT.match(limit) or int(limit) < 1:
        raise _BadArgument(f"limit must be a positive number in ASCII digits, not {limit[:20]!r}")
    return DeadLettersRequest(request_id, int(limit))


def _cancel(request_id: str, attrs: dict[str, str]) -> ControlRequest:
    thread = attrs.get("thread", "")
    if not _THREAD.match(thread):
        raise _BadArgument(f"thread must be a thread id (a UUID), not {thread[:40]!r}")
    return CancelRequest(request_id, thread)


# the control requests a server takes (besides hello), and how each reads its arguments
_REQUESTS: dict[str, Callable[[str, dict[str, str]], ControlRequest]] = {
    "status": _status,
    "deadletters": _deadletters,
    "cancel": _cancel,
    "watch": lambda request_id, attrs: WatchRequest(request_id),
}


def _valid_id(request_id: str | None) -> bool:
    return request_id is not None and _ID.match(request_id) is not None


def _token_matches(presented: str | None, expected: bytes) -> bool:
    """Compare as bytes, in constant time; a missing or unencodable token never matches."""
    if presented is None:
        return False
    try:
        given = presented.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, expected)


def _versions(text: str | None) -> list[int] | None:
    """The versions a hello offers ("1 2"), or None if the list is missing or not digits."""
    if text is None:
        return None
    words = text.split(" ")
    if not 1 <= len(words) <= 16 or not all(_VERSION.match(word) for word in words):
        return None
    return [int(word) for word in words]


def _sender(root: etree._Element) -> str:
    """The `<from>` of an envelope (empty if it has none)."""
    if root.tag == MESSAGE and len(root) and root[0].tag == META:
        return root[0].findtext(FROM) or ""
    return ""


# ---------------------------------------------------------------------------- the client side
class ClientState(str, Enum):
    IDLE = "idle"
    GREETING = "greeting"
    OPEN = "open"
    CLOSED = "closed"


class ClientConnection:
    """The client side of a connection: the hello, requests matched to their answers by id,
    envelopes both ways. What this side may send in each state: IDLE the hello, OPEN
    requests and envelopes (anything else is a LocalProtocolError, a bug of the caller)."""

    def __init__(self, name: str, *, xml: SafeXml, token: str | None = None, max_frame: int = CLIENT_MAX_FRAME,
                 versions: tuple[int, ...] = PROTOCOL_VERSIONS) -> None:
        self.name = name
        self.state = ClientState.IDLE
        self.version: int | None = None
        self.server_max_frame: int | None = None  # from the welcome
        self.conversation_timeout_s: float | None = None  # from the welcome
        self.dropped = 0  # frames from the server larger than `max_frame` (skipped)
        self.ignored = 0  # control frames of kinds this side does not know (skipped, counted)
        self._xml = xml
        self._token = token
        self._versions = versions
        self._decoder = FrameDecoder(max_frame)
        self._ids = itertools.count(1)
        self._pending: dict[str, str] = {}  # request id -> verb, until answered
        self._watches: set[str] = set()  # answered watch requests: their hops are taken
        self._seq = 0  # envelopes sent
        self._eof = False

    # ------------------------------------------------------------------ output
    def hello(self) -> tuple[str, bytes]:
        """(request id, bytes) of the first frame: this client's name, the versions it speaks
        and the token."""
        self._expect(ClientState.IDLE, "send a hello")
        self.state = ClientState.GREETING
        request_id = self._new_request("hello")
        return request_id, encode_frame(control.hello(request_id, self.name, self._versions, self._token))

    def request(self, verb: str, **attrs: str) -> tuple[str, bytes]:
        """(request id, bytes) of a control request; its answer will carry that id."""
        self._expect(ClientState.OPEN, f"send a {verb} request")
        request_id = self._new_request(verb)
        return request_id, encode_frame(control.request(verb, request_id, **attrs))

    def send_envelope(self, data: bytes) -> tuple[int, bytes]:
        """(its number on the connection, the bytes) of one envelope to the server; with
        `acks`, the server confirms each number once (an `Ack` or a `<huh>` carrying it)."""
        self._expect(ClientState.OPEN, "send an envelope")
        self._seq += 1
        return self._seq, encode_frame(data)

    @property
    def acks(self) -> bool:
        return self.version is not None and self.version >= ACKS_SINCE

    def _expect(self, state: ClientState, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"cannot {what} while {self.state.value}")

    def _new_request(self, verb: str) -> str:
        request_id = str(next(self._ids))
        self._pending[request_id] = verb
        return request_id

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; b"" when its output ended."""
        if self.state is ClientState.CLOSED or self._eof:
            return
        if not data:
            self._eof = True
            return
        self._decoder.receive(data)

    def next_event(self) -> Event | Literal[NeedData.NEED_DATA]:
        """The next event, or NEED_DATA."""
        while self.state is not ClientState.CLOSED:
            item = self._decoder.next_event()
            if item is None:
                if not self._eof:
                    return NEED_DATA
                break
            if isinstance(item, Oversize):
                self.dropped += 1  # larger than this client takes: skipped, counted
                continue
            event = self._take(item.data)
            if event is not None:
                return event
        self.state = ClientState.CLOSED
        return Closed(mid_frame=self._decoder.mid_frame)

    def _take(self, data: bytes) -> Event | None:
        if not control.is_control(data):
            return self._envelope(data)
        try:
            frame = control.read_control(self._xml.parse(data))
        except (UnsafeXml, etree.XMLSyntaxError) as exc:
            return self._violation(f"an unreadable control frame: {exc}")
        if frame is None:
            return self._envelope(data)
        if frame.kind == "ack" and self.acks:
            return self._ack(frame)
        if frame.kind == "hop" and frame.attrs.get("watch") in self._watches:
            try:
                return Hop(frame.attrs["watch"], json.loads(frame.text))
            except ValueError as exc:
                return self._violation(f"a hop that is not JSON: {exc}")
        if frame.kind not in ("welcome", "result", "error"):
            self.ignored += 1  # a kind this side does not speak (a later version's): never an answer
            return None
        request_id = frame.attrs.get("id")
        if request_id is None:
            if frame.kind != "error":
                return self._violation(f"a {frame.kind} frame without an id")
            return self._refused(frame, None)
        verb = self._pending.pop(request_id, None)
        if verb is None:
            return self._violation(f"a {frame.kind} answering no request (id {request_id!r})")
        if frame.kind == "error":
            return self._refused(frame, request_id, hello=verb == "hello")
        if (frame.kind == "welcome") != (verb == "hello"):
            return self._violation(f"a {frame.kind} answering a {verb} request")
        if frame.kind == "welcome":
            return self._welcome(frame, request_id)
        try:
            data_ = json.loads(frame.text)
        except ValueError as exc:
            return self._violation(f"a result that is not JSON: {exc}")
        if verb == "watch":
            self._watches.add(request_id)  # its hops may follow now
        return Answer(request_id, verb, data_)

    def _ack(self, frame: control.ControlFrame) -> Event:
        seq = frame.attrs.get("seq", "")
        if not _COUNT.match(seq) or not 1 <= int(seq) <= self._seq:
            return self._violation(f"an ack of envelope {seq[:20]!r}, which this side did not send")
        return Ack(int(seq), frame.attrs.get("thread", ""), frame.attrs.get("message", ""))

    def _envelope(self, data: bytes) -> Event:
        if self.state is not ClientState.OPEN:
            return self._violation(f"an envelope while {self.state.value}")
        return Envelope(data)

    def _welcome(self, frame: control.ControlFrame, request_id: str) -> Event:
        attrs = frame.attrs
        version, max_frame = attrs.get("version", ""), attrs.get("max-frame", "")
        if not _VERSION.match(version) or int(version) not in self._versions or not _COUNT.match(max_frame):
            return self._violation(f"a welcome with version {version!r} and max-frame {max_frame!r}")
        try:
            timeout = float(attrs.get("conversation-timeout", ""))
        except ValueError:
            return self._violation("a welcome without a conversation-timeout")
        if attrs.get("name") != self.name:
            return self._violation(f"a welcome naming {attrs.get('name')!r}, not {self.name!r}")
        self.state = ClientState.OPEN
        self.version, self.server_max_frame, self.conversation_timeout_s = int(version), int(max_frame), timeout
        return Welcome(request_id, self.name, self.version, self.server_max_frame, timeout)

    def _refused(self, frame: control.ControlFrame, request_id: str | None, *, hello: bool = False) -> Event:
        close = frame.attrs.get("close") == "true"
        if close or hello:  # a refused hello ends this client's use of the connection
            self.state = ClientState.CLOSED
        return Refusal(frame.attrs.get("code", "error"), frame.text, close, request_id=request_id)

    def _violation(self, reason: str) -> Event:
        self.state = ClientState.CLOSED
        return ProtocolError(reason)

    @property
    def pending(self) -> frozenset[str]:
        """The ids of requests not answered yet."""
        return frozenset(self._pending)
