"""Outcomes (DESIGN.md §6): every unit that fails is counted, logged, recorded, and told
to whoever should hear of it, exactly once.

Who hears is one table, `NOTIFY`, read by the pure `decide()`:

| codes                                         | who hears                                    |
| --------------------------------------------- | -------------------------------------------- |
| refusals in the pipeline (malformed, no-route, | the sender: a `<huh>` for an external client, |
| invalid-payload, routing, ...) and `internal`  | a SystemError for a listener                 |
| `handler`, `timeout`, `wrong-type` (and        | the caller of the failed branch              |
| `internal` in a handler's call)               |                                              |
| `hops`, `conversation-budget`,                | the conversation's root caller, once         |
| `conversation-timeout`, `cancelled`           |                                              |
| `shutdown`, `undeliverable`, `overloaded`      | nobody                                       |
| anything about an error report                | nobody (no error loops), except the above    |

`Reporter` applies a decision: it builds the `<huh>` or the SystemError and hands it
to the client's session or back to the pump (`push`), and records a dead letter with
the full reason and the original bytes. An error report that cannot be delivered is
logged and recorded, never answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

from lxml import etree

from agentserver.codes import ErrorCode, canned
from agentserver.envelope import NIL_THREAD, build_envelope, build_huh
from agentserver.message_bus.events import conversation_id
from agentserver.message_bus.message_state import Delivery, MessageState, OriginKind
from agentserver.message_bus.responses import payload_element, system_message
from agentserver.outbound import Outbound, OutboundKind
from agentserver.primitives import system_error

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.calls import Calls
    from agentserver.message_bus.counters import Counters
    from agentserver.message_bus.dead_letters import DeadLetters
    from agentserver.message_bus.pipeline_context import PipelineContext
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["Notify", "Outcome", "NOTIFY", "decide", "Reporter", "ShutdownReport"]

log = logging.getLogger("agentserver.pump")


class Notify(Enum):
    SENDER = "sender"  # who sent the failed message
    CALLER = "caller"  # who called the branch whose handler failed
    ROOT = "root"  # the client at the root of the conversation, once per conversation
    NOBODY = "nobody"


E = ErrorCode
NOTIFY: dict[ErrorCode, Notify] = {
    E.MALFORMED: Notify.SENDER,
    E.TOO_LARGE: Notify.SENDER,
    E.FORBIDDEN_DTD: Notify.SENDER,
    E.INVALID_ENVELOPE: Notify.SENDER,
    E.FORBIDDEN_SENDER: Notify.SENDER,
    E.NO_ROUTE: Notify.SENDER,
    E.INVALID_PAYLOAD: Notify.SENDER,
    E.UNREADABLE_PAYLOAD: Notify.SENDER,
    E.UNKNOWN_THREAD: Notify.SENDER,
    E.ROUTING: Notify.SENDER,
    E.INTERNAL: Notify.SENDER,
    E.HANDLER: Notify.CALLER,
    E.TIMEOUT: Notify.CALLER,
    E.WRONG_TYPE: Notify.CALLER,
    E.BUDGET: Notify.CALLER,
    E.LLM_ERROR: Notify.CALLER,
    E.LLM_UNAVAILABLE: Notify.CALLER,
    E.LLM_TOO_LARGE: Notify.CALLER,
    E.LLM_CONFIG: Notify.CALLER,
    E.LLM_INVALID: Notify.CALLER,
    E.NO_ANSWER: Notify.NOBODY,  # raised in the waiting handler, not reported
    E.LATE: Notify.NOBODY,
    E.HOPS: Notify.ROOT,
    E.CONVERSATION_BUDGET: Notify.ROOT,
    E.CONVERSATION_TIMEOUT: Notify.ROOT,
    E.CANCELLED: Notify.ROOT,
    E.SHUTDOWN: Notify.NOBODY,
    E.DUPLICATE: Notify.NOBODY,  # its sender gets an ack again
    E.UNDELIVERABLE: Notify.NOBODY,
    E.OVERLOADED: Notify.NOBODY,
}
# codes only the server's connection layer uses; a unit in the pump never fails with them
CONNECTION_CODES = frozenset({E.BAD_TOKEN, E.BAD_ARGUMENT, E.UNAUTHORIZED, E.TOO_MANY_CONNECTIONS, E.HELLO_TIMEOUT,
                              E.FRAME_TIMEOUT, E.IDLE_TIMEOUT, E.ALREADY_NAMED, E.UNKNOWN_VERB, E.UNSUPPORTED_VERSION})
HANDLER_STEP = "handler"  # the step name of failures in or around a handler's call

# how a failure reads in the log, when it is more than a refusal (%-style, by name)
WORDS: dict[ErrorCode, str] = {
    E.HANDLER: "handler crashed: %(to)s raised",
    E.TIMEOUT: "handler timed out: %(to)s",
    E.WRONG_TYPE: "handler returned a wrong type: %(to)s",
    E.INTERNAL: "internal error (a bug in agentserver) in step %(step)s",
    E.UNDELIVERABLE: "undeliverable: %(sender)s -> client %(to)s is gone or not reading",
    E.LATE: "late answer dropped: %(sender)s -> %(to)s",
    E.HOPS: "conversation ended at its hop limit: %(sender)s -> %(to)s",
    E.CONVERSATION_BUDGET: "conversation ended over its budget: %(sender)s -> %(to)s",
    E.SHUTDOWN: "dropped at shutdown: %(sender)s -> %(to)s",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    notify: Notify
    level: int  # of the log line


def decide(code: ErrorCode, step: str, *, is_error_report: bool, root_told: bool) -> Outcome:
    """Who hears of a failure `code` raised in `step`, and how loudly it is logged."""
    notify = NOTIFY.get(code, Notify.SENDER)
    if code is E.INTERNAL:
        return Outcome(Notify.CALLER if step == HANDLER_STEP else notify, logging.ERROR)
    if notify is Notify.ROOT:  # told once per conversation, even about an error report
        return Outcome(Notify.NOBODY, logging.DEBUG) if root_told else Outcome(Notify.ROOT, logging.WARNING)
    if code is E.LATE or code is E.DUPLICATE:  # expected now and then: an answer too late, a resent message
        return Outcome(Notify.NOBODY, logging.INFO)
    level = logging.ERROR if code is E.HANDLER else logging.WARNING  # a handler crash is a bug to fix
    if is_error_report:
        return Outcome(Notify.NOBODY, level)
    return Outcome(notify, level)


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """How a pump's shutdown went."""

    handled: int
    errored: int
    dropped: int  # units cancelled or never started because of the shutdown (without a journal)
    clean: bool  # everything in flight finished before the deadline
    deferred: int = 0  # with a journal: units cut off by the deadline, kept to run at the next start

    @classmethod
    def of(cls, counters: "Counters", dropped_before: int, clean: bool) -> "ShutdownReport":
        return cls(handled=counters.handled, errored=counters.errored_total, clean=clean, deferred=counters.deferred,
                   dropped=counters.errored[E.SHUTDOWN] - dropped_before)

    def __str__(self) -> str:
        state = "clean" if self.clean else "deadline reached"
        return f"handled={self.handled} errored={self.errored} dropped={self.dropped} deferred={self.deferred} ({state})"


class Reporter:
    """Applies `decide()`: counts, logs, records and tells. Owned by one pump."""

    def __init__(self, ctx: "PipelineContext", counters: "Counters", dead_letters: "DeadLetters", calls: "Calls",
                 push: Callable[[MessageState], None], *, defer_shutdown: bool = False) -> None:
        self.defer_shutdown = defer_shutdown  # with a journal, a unit cut off by shutdown is deferred, not dropped
        self.ctx = ctx
        self.counters = counters
        self.dead_letters = dead_letters
        self.calls = calls  # a failure in an awaited call's branch goes to its waiter as PeerError
        self.push = push  # the pump's response lane, for SystemErrors to listeners

    def report(self, state: MessageState) -> None:
        error = state.error
        assert error is not None
        if error.code is E.SHUTDOWN and self.defer_shutdown:
            self.counters.deferred += 1  # kept in the journal: it runs at the next start
            return
        self.counters.error(error.code)
        thread = state.delivery_thread or state.thread
        conversation = thread.conversation if thread is not None else state.conversation
        outcome = decide(error.code, error.step, is_error_report=state.is_error_report,
                         root_told=conversation is not None and conversation.told)
        # an external sender is who its connection is, whatever its <from> claims
        origin = state.origin
        sender = (origin.kind is OriginKind.EXTERNAL and origin.name) or state.sender or origin.name or ""
        route = state.route
        to = route.listener.name if isinstance(route, Delivery) else state.to
        thread_id = thread.id if thread is not None else state.thread_ref
        cid = conversation_id(conversation) if conversation is not None else (state.thread_ref or state.thread_hint or "")
        log.log(outcome.level, WORDS.get(error.code, "refused code=%(code)s step=%(step)s from=%(sender)s to=%(to)s")
                + " conversation=%(conversation)s thread=%(thread)s reason=%(reason)s",
                {"code": error.code, "step": error.step, "sender": sender, "to": to, "conversation": cid,
                 "thread": thread_id, "reason": error.reason}, exc_info=error.exc)
        if error.code is E.DUPLICATE:  # a resend after a lost ack: its sender gets the ack again, nothing is lost
            return
        raw = state.canonical or state.raw
        if not raw and state.root is not None:
            raw = etree.tostring(state.root, method="c14n", exclusive=True)
        self.dead_letters.record(time=time.time(), code=error.code, reason=error.reason, step=error.step,
                                 sender=sender, thread=thread_id, raw=raw, conversation=cid)
        if outcome.notify is Notify.SENDER:
            self._tell_sender(state, error.code)
        elif outcome.notify is Notify.CALLER:
            self._tell_caller(state, error.code)
        elif outcome.notify is Notify.ROOT and conversation is not None:
            self.tell_root(conversation, error.code)

    # -- the notices ------------------------------------------------------------------
    def tell_root(self, conversation: "Conversation", code: ErrorCode) -> None:
        """Tell the client at the root of `conversation` that it ended (`code`), once."""
        if conversation.told:
            return
        conversation.told = True
        if conversation.external_id is not None:
            self._tell_client(conversation, code)

    def _tell_sender(self, state: MessageState, code: ErrorCode) -> None:
        kind = state.origin.kind
        if kind is OriginKind.EXTERNAL:
            client = state.origin.name or state.sender or "client"
            thread_id = state.thread_ref or state.thread_hint or NIL_THREAD
            ack = state.ack  # the refused envelope's number on its connection: this is its one answer
            seq = ack.seq if ack is not None else None
            if ack is not None:
                ack.done = True
            huh = build_huh(to=client, thread=thread_id, code=code, message=canned(code), seq=seq)
            outbound = Outbound(OutboundKind.HUH, thread_id, "system", huh, code=code, message=canned(code), seq=seq)
            if state.session is None or not state.session.deliver(outbound):
                self._undeliverable(client, thread_id, code, huh)
        elif kind is OriginKind.LISTENER and state.sender_thread is not None:
            thread, peer = state.sender_thread, state.to or ""
            if not self.calls.fail(state.call_id, code, peer):
                error = system_error(code, state.call_id, peer)
                self.push(system_message(self.ctx, error, to=thread.owner, thread=thread, call=state.call_id or None))

    def _tell_caller(self, state: MessageState, code: ErrorCode) -> None:
        thread = state.delivery_thread
        parent = thread.parent if thread is not None else None
        if parent is None:
            return
        assert thread is not None
        call_id, peer = thread.call_id or "", thread.owner
        if parent.parent is None and parent.conversation.external_id is not None:
            self._tell_client(parent.conversation, code)
        elif self.calls.fail(call_id, code, peer):
            return  # the caller awaits this call: PeerError
        elif parent.owner in self.ctx.routes.by_name:
            error = system_error(code, call_id, peer)
            self.push(system_message(self.ctx, error, to=parent.owner, thread=parent, call=call_id or None))

    def _tell_client(self, conversation: "Conversation", code: ErrorCode) -> None:
        error = system_error(code)
        element = payload_element(error, self.ctx)
        client, thread_id = conversation.client, conversation.external_id or NIL_THREAD
        frame = etree.tostring(build_envelope(element, sender="system", to=client, thread=thread_id))
        outbound = Outbound(OutboundKind.REPLY, thread_id, "system", frame, error, element)
        session = conversation.session
        if session is None or not session.deliver(outbound):
            self._undeliverable(client, thread_id, code, frame)

    def _undeliverable(self, client: str, thread_id: str, code: ErrorCode, frame: bytes) -> None:
        """An error report the client cannot take: an error about an error, logged and recorded only."""
        log.warning("undeliverable error report code=%s to=%s thread=%s", code, client, thread_id)
        self.dead_letters.record(time=time.time(), code=ErrorCode.UNDELIVERABLE, step="report", sender="system",
                                 thread=thread_id, raw=frame, conversation=thread_id,
                                 reason=f"error report ({code}) to client {client!r}: the client is gone or not reading")
