"""What flows through the pipeline (`MessageState`) and what handlers see and return.

A `MessageState` starts as raw bytes plus the `Origin` that handed them in; each
pipeline step fills in one more field or sets `error`. Once `error` is set, later
steps pass the state through untouched, so the first failure is the one reported.

Accounting: every state is one unit of work. It is counted `accepted` when it is
born and ends exactly once (`handled` or `errored`): `_settle` or `_fail` in stream_pump.
A state may hold a conversation (`conversation`), an admission ticket (a place in
the pipeline) and an intake ticket (a place in the bounded external intake, kept until
its handler starts); `fork` makes a sibling that holds them too, so none is released
while any part of the message still needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Sequence

from agentserver.primitives import ROUTING_ERROR, SystemError

if TYPE_CHECKING:  # pragma: no cover
    from lxml import etree

    from agentserver.message_bus.listeners import Listener
    from agentserver.message_bus.thread_registry import Conversation, Thread

__all__ = [
    "MessageState",
    "StepError",
    "Origin",
    "OriginKind",
    "HandlerMetadata",
    "HandlerResponse",
    "HistoryEntry",
    "SystemError",
    "ROUTING_ERROR",
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
    """Why a message failed: a short `code` (see primitives.ERROR_CODES) and the full reason."""

    code: str
    reason: str
    step: str


class Ticket:
    """Counts the live parts of one admitted envelope; the last one out frees the slot."""

    __slots__ = ("count", "_release")

    def __init__(self, release) -> None:
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
    # filled by the steps, in pipeline order
    root: "etree._Element | None" = None  # repair: the parsed envelope
    repaired: bool = False
    canonical: bytes | None = None  # c14n: exclusive canonical bytes of the envelope
    sender: str = ""  # envelope validation: <from>
    to: str | None = None  # <to>
    thread_ref: str = ""  # <thread> as on the wire
    payload_element: "etree._Element | None" = None  # payload extraction
    root_tag: str = ""
    thread: "Thread | None" = None  # thread assignment: the sender's thread
    payload_type: Any = None  # xsd validation: the PayloadType for root_tag
    payload: Any = None  # deserialization
    target: "Listener | str | None" = None  # routing: a Listener, or an external client name
    delivery_thread: "Thread | None" = None  # routing: the thread the target handles it on
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

    def fail(self, code: str, reason: str, step: str) -> "MessageState":
        if self.error is None:
            self.error = StepError(code, reason, step)
        return self

    def fork(self, **changes: Any) -> "MessageState":
        """A sibling unit (fan-out, broadcast) sharing this state's holds."""
        child = MessageState(
            raw=self.raw,
            origin=self.origin,
            root=self.root,
            repaired=self.repaired,
            canonical=self.canonical,
            sender=self.sender,
            to=self.to,
            thread_ref=self.thread_ref,
            payload_element=self.payload_element,
            root_tag=self.root_tag,
            thread=self.thread,
            payload_type=self.payload_type,
            payload=self.payload,
            target=self.target,
            delivery_thread=self.delivery_thread,
            sender_thread=self.sender_thread,
            error=self.error,
            is_error_report=self.is_error_report,
            prebuilt=self.prebuilt,
            conversation=self.conversation,
            ticket=self.ticket,
            intake_ticket=self.intake_ticket,
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
        """This unit is out of the pipeline (parked for its listener): free its admission share."""
        if self.ticket is not None:
            self.ticket.drop()
            self.ticket = None

    def leave_intake(self) -> None:
        """This unit's handler has started: free its share of the intake."""
        if self.intake_ticket is not None:
            self.intake_ticket.drop()
            self.intake_ticket = None

    def release(self) -> None:
        """Give back what this unit holds. Idempotent."""
        if self.settled:
            return
        self.settled = True
        self.leave_pipeline()
        self.leave_intake()
        if self.conversation is not None:
            self.conversation.release()


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One message as recorded in a thread's context buffer."""

    sender: str
    to: str
    root_tag: str
    payload: Any


@dataclass(frozen=True, slots=True)
class HandlerMetadata:
    """What a handler knows about the message besides its payload."""

    thread_id: str
    from_id: str
    own_name: str | None = None  # agents only
    is_self_call: bool = False
    usage_instructions: str = ""  # agents: peers' schemas and the response rules
    todo_nudge: str = ""  # agents: raised todos, empty when none
    history: Sequence[HistoryEntry] = ()  # this thread's messages, oldest first (read-only)


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
