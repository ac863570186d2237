"""What flows through the pipeline (`MessageState`) and what handlers see and return.

A `MessageState` starts as raw bytes plus the `Origin` that handed them in; each
pipeline step fills in one more field or sets `error`. Once `error` is set, later
steps pass the state through untouched, so the first failure is the one reported.
Routing ends the pipeline with a frozen `route`: a `Delivery` to a listener, or a
`ToClient` reply to the external client at the root of the conversation.

Accounting: every state is one unit of work. It is counted `accepted` when it is
born and ends exactly once (`handled` or `errored`), in stream_pump. A state may
hold a conversation (`conversation`), an admission ticket (a place in the pipeline)
and an intake ticket (a place in the bounded external intake, kept until its handler
starts); `fork` makes a sibling that holds them too, so none is released while any
part of the message still needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from agentserver.codes import ErrorCode
from agentserver.primitives import SystemError

if TYPE_CHECKING:  # pragma: no cover
    from lxml import etree

    from agentserver.message_bus.calls import Call
    from agentserver.message_bus.durability import Entry
    from agentserver.message_bus.listeners import Listener, PayloadType
    from agentserver.message_bus.mailboxes import Session
    from agentserver.message_bus.thread_registry import Conversation, Thread

__all__ = [
    "MessageState",
    "StepError",
    "Origin",
    "OriginKind",
    "Delivery",
    "ToClient",
    "Ticket",
    "HandlerMetadata",
    "HandlerResponse",
    "HistoryEntry",
    "SystemError",
]


class OriginKind(Enum):
    EXTERNAL = "external"  # a client (socket connection, in-process client, inject())
    LISTENER = "listener"  # built by the pump from a handler's return value
    SYSTEM = "system"  # built by the pump itself (Boot, SystemError)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who handed the bytes to the pump. Only the pump creates LISTENER/SYSTEM origins."""

    kind: OriginKind
    name: str | None = None  # the client's name, the listener's name, or "system"

    @classmethod
    def external(cls, name: str | None = None) -> "Origin":
        return cls(OriginKind.EXTERNAL, name)

    @classmethod
    def listener(cls, name: str) -> "Origin":
        return cls(OriginKind.LISTENER, name)


SYSTEM_ORIGIN = Origin(OriginKind.SYSTEM, "system")


@dataclass(frozen=True, slots=True)
class StepError:
    """Why a message failed: a short `code` and the full reason (never sent to senders)."""

    code: ErrorCode
    reason: str
    step: str
    exc: BaseException | None = None  # `internal` errors: the exception, logged with its traceback


@dataclass(frozen=True, slots=True)
class Delivery:
    """Routing's verdict: `listener` handles the message on `thread`."""

    listener: "Listener"
    thread: "Thread"


@dataclass(frozen=True, slots=True)
class ToClient:
    """Routing's verdict: the message answers the client (or `system`) at the root of
    `thread`'s conversation."""

    thread: "Thread"

    @property
    def client(self) -> str:
        return self.thread.owner


class FrameAck:
    """An external envelope's number on its connection: it gets one ack or one `<huh>`."""

    __slots__ = ("seq", "done")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.done = False


class Ticket:
    """Counts the live parts of one admitted envelope; the last one out frees the slot."""

    __slots__ = ("count", "_release")

    def __init__(self, release: Callable[[], None]) -> None:
        self.count = 1
        self._release = release

    def add(self) -> None:
        self.count += 1

    def drop(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._release()


@dataclass(slots=True, eq=False)
class MessageState:
    raw: bytes
    origin: Origin
    session: "Session | None" = None  # external: the connection (or in-process client) it came from
    # filled by the steps, in pipeline order
    root: "etree._Element | None" = None  # repair: the parsed envelope
    canonical: bytes | None = None  # c14n: exclusive canonical bytes of the envelope
    sender: str = ""  # envelope validation: <from>
    to: str | None = None  # <to>
    thread_ref: str = ""  # <thread> as on the wire
    message_id: str = ""  # <id>: this unit's message (a fan-out copy shares its envelope's)
    call_id: str = ""  # <call>: the call this message makes, or (a respond()) answers
    payload_element: "etree._Element | None" = None  # payload extraction
    root_tag: str = ""
    thread: "Thread | None" = None  # thread assignment: the sender's thread
    payload_type: "PayloadType | None" = None  # xsd validation: the PayloadType for root_tag
    payload: Any = None  # deserialization
    route: Delivery | ToClient | None = None  # routing
    sender_thread: "Thread | None" = None  # pump-built: the thread the sending handler was on
    error: StepError | None = None
    # bookkeeping
    is_error_report: bool = False  # a SystemError the pump sent: failures are never answered
    prebuilt: bool = False  # built by the pump: already a tree; repair, c14n and envelope checks skip it
    conversation: "Conversation | None" = None
    ticket: Ticket | None = None  # a place among the envelopes admitted to the pipeline
    intake_ticket: Ticket | None = None  # external messages: a place in the bounded intake
    settled: bool = False
    thread_hint: str | None = None  # external: the thread the client injected with (for <huh>s)
    branch: "Call | None" = None  # the awaited call (meta.ask) whose branch this unit is part of
    born: float = 0.0  # time.perf_counter() when it was accepted
    ack: FrameAck | None = None  # external: the envelope's number on its connection (acked once)
    client_id: bool = False  # external: the sender gave the message id (publisher dedupe)
    redelivered: bool = False  # replayed from the journal after a restart
    journal: "Entry | None" = None  # its place in the journal (durability.py), shared by its fan-out copies
    asking: int = 0  # its handler's calls in flight (meta.ask): while any are, it holds no handler slot

    def fail(self, code: ErrorCode, reason: str, step: str, exc: BaseException | None = None) -> "MessageState":
        if self.error is None:
            self.error = StepError(code, reason, step, exc)
        return self

    def fork(self, **changes: Any) -> "MessageState":
        """A sibling unit (fan-out, broadcast) sharing this state's holds."""
        child = MessageState(
            raw=self.raw,
            origin=self.origin,
            session=self.session,
            root=self.root,
            canonical=self.canonical,
            sender=self.sender,
            to=self.to,
            thread_ref=self.thread_ref,
            message_id=self.message_id,
            call_id=self.call_id,
            payload_element=self.payload_element,
            root_tag=self.root_tag,
            thread=self.thread,
            payload_type=self.payload_type,
            payload=self.payload,
            route=self.route,
            sender_thread=self.sender_thread,
            error=self.error,
            is_error_report=self.is_error_report,
            prebuilt=self.prebuilt,
            conversation=self.conversation,
            ticket=self.ticket,
            intake_ticket=self.intake_ticket,
            thread_hint=self.thread_hint,
            branch=self.branch,
            born=self.born,
            ack=self.ack,
            client_id=self.client_id,
            redelivered=self.redelivered,
            journal=self.journal,
        )
        for key, value in changes.items():
            setattr(child, key, value)
        if child.ticket is not None:
            child.ticket.add()
        if child.intake_ticket is not None:
            child.intake_ticket.add()
        if child.conversation is not None:
            child.conversation.hold()
        return child

    def bind(self, conversation: "Conversation") -> None:
        """Attach this unit to its conversation (keeps the conversation alive)."""
        if self.conversation is None:
            self.conversation = conversation
            conversation.hold()

    def leave_pipeline(self) -> None:
        """This unit is out of the pipeline (parked or started): free its admission share."""
        if self.ticket is not None:
            self.ticket.drop()
            self.ticket = None

    def leave_intake(self) -> None:
        """This unit's handler has started: free its share of the intake."""
        if self.intake_ticket is not None:
            self.intake_ticket.drop()
            self.intake_ticket = None

    def release(self) -> "Conversation | None":
        """Give back what this unit holds (once). Returns its conversation if that ended
        with this unit (nothing of it is in flight any more)."""
        if self.settled:
            return None
        self.settled = True
        self.leave_pipeline()
        self.leave_intake()
        conversation = self.conversation
        if conversation is not None and conversation.release():
            return conversation
        return None

    @property
    def delivery_thread(self) -> "Thread | None":
        """The thread the routed message is handled (or answered) on."""
        return self.route.thread if self.route is not None else None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message as recorded in a thread's context buffer."""

    sender: str
    to: str
    root_tag: str
    payload: Any
    timestamp: float = 0.0  # when it was delivered (seconds since the epoch)
    message_id: str = ""
    call_id: str = ""  # the call it made, or (a respond()) answered


@dataclass(frozen=True, slots=True)
class HandlerMetadata:
    """What a handler knows about the message besides its payload, and `ask` to await a peer."""

    thread_id: str
    from_id: str
    own_name: str | None = None  # agents only
    is_self_call: bool = False
    usage_instructions: str = ""  # agents: peers' schemas and the response rules
    todo_nudge: str = ""  # agents: raised todos, empty when none
    history: Sequence[HistoryEntry] = ()  # this thread's messages, oldest first (read-only)
    conversation_id: str = ""  # the thread id the external client used (the same in logs and status)
    message_id: str = ""  # this message's id (a UUID, stable across redelivery)
    call_id: str = ""  # the call this handler is answering (what a respond() answers)
    redelivered: bool = False  # this message was handled before, by a process that died
    _ask: Callable[[str, Any, float | None], Awaitable[Any]] | None = field(default=None, repr=False, compare=False)
    _llm: Callable[..., Awaitable[Any]] | None = field(default=None, repr=False, compare=False)
    # the client at the root asked to see this handler's answer as it is written: pieces of
    # text go to it (an LLM agent passes it as meta.llm's on_token); None when nobody asked
    stream: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    async def ask(self, peer: str, payload: Any, *, timeout: float | None = None) -> Any:
        """Send `payload` to `peer` (as `HandlerResponse(payload, to=peer)` would) and return
        the payload it `respond()`s with. Raises `PeerError` if the call fails (`code`,
        `peer`, `call_id`) and `TimeoutError` after `timeout` seconds. While it waits the
        handler holds no handler slot."""
        if self._ask is None:
            raise RuntimeError("meta.ask works in a handler the pump called")
        return await self._ask(peer, payload, timeout)

    async def llm(self, messages: Any, **options: Any) -> Any:
        """Ask the organism's language models (`llm:` in organism.yaml): `messages` is a
        string (one user message) or a list of {"role", "content"} dicts. Options:
        `model`, `max_tokens`, `temperature` (defaults: this listener's `llm:` block),
        `grammar` (GBNF), `on_token` (a callable: the answer streams to it). Returns a
        `Completion(text, usage, backend, model)`, counted against this conversation's
        and this agent's token budgets. Raises `agentserver.llm.LlmError` (`code`:
        budget, llm-error, llm-unavailable, llm-too-large); left unhandled, the caller
        hears a SystemError with that code."""
        if self._llm is None:
            raise RuntimeError("meta.llm works in a handler the pump called")
        return await self._llm(messages, **options)


@dataclass(frozen=True, slots=True)
class HandlerResponse:
    """A handler's answer: forward `payload` to listener `to`, or `respond()` to the caller.

    `to=None` without `respond()` routes by the payload's root tag (broadcast).
    """

    payload: Any
    to: str | None = None
    is_response: bool = False

    @classmethod
    def respond(cls, payload: Any) -> "HandlerResponse":
        """Answer whoever called this branch; the call chain is pruned by one hop."""
        return cls(payload=payload, to=None, is_response=True)
