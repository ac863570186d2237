"""What one conversation may spend (DESIGN.md §10), and ending it when it is over.

A conversation is ended (its `ended` code set; what is left of it refused, its root
caller told once, its parked units ended and its running handlers cancelled) when:

- `conversation-budget`: it has more than `max_conversation_in_flight` units alive at
  once (fan-out, broadcast, handler output), or more than `max_conversation_units` in
  its life. The pump checks where handler output is accepted, so a handler that sends
  300 copies of itself to itself is stopped after a few generations, not 200,000 units on;
- `conversation-timeout`: it is older than `conversation_timeout_s` (checked once a
  second by `tick`; the deadline is announced to clients in the welcome frame);
- `cancelled`: its client cancelled it (`cancel`);
- `hops`: routing ended it at `max_thread_hops` (the step sets `ended`; the pump's
  dispatch refuses what is left).

The guard also forgets idle conversations on its tick. Time is passed in (`clock`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from agentserver.codes import ErrorCode

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.limits import Limits
    from agentserver.message_bus.flow import HandlerSlots
    from agentserver.message_bus.handler_call import HandlerTasks
    from agentserver.message_bus.mailboxes import Session
    from agentserver.message_bus.message_state import MessageState
    from agentserver.message_bus.outcomes import Reporter
    from agentserver.message_bus.stores import Stores
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["ConversationGuard"]

TICK_S = 1.0


class ConversationGuard:
    def __init__(self, limits: "Limits", stores: "Stores", reporter: "Reporter", slots: "HandlerSlots",
                 handlers: "HandlerTasks", fail: Callable[["MessageState", ErrorCode, str], None],
                 clock: Callable[[], float]) -> None:
        self.limits = limits
        self.stores = stores
        self.reporter = reporter
        self.slots = slots
        self.handlers = handlers
        self.fail = fail  # the pump's: ends a unit with an error
        self.clock = clock
        self._timer: asyncio.TimerHandle | None = None

    def over_budget(self, conversation: "Conversation") -> str | None:
        """Why `conversation` is over its budget of units, or None."""
        limits = self.limits
        if conversation.pending > limits.max_conversation_in_flight:
            return f"{conversation.pending} units in flight, limit {limits.max_conversation_in_flight}"
        if conversation.units > limits.max_conversation_units:
            return f"{conversation.units} units in all, limit {limits.max_conversation_units}"
        return None

    def admit(self, state: "MessageState") -> "Conversation | None":
        """The conversation of `state`, a unit handler output just made; or None if that unit
        put the conversation over its budget: the unit fails and the conversation is ended."""
        conversation = state.conversation
        assert conversation is not None  # built on a thread, so bound to its conversation
        over = self.over_budget(conversation)
        if over is None:
            return conversation
        self.fail(state, ErrorCode.CONVERSATION_BUDGET, over)
        self.end(conversation, ErrorCode.CONVERSATION_BUDGET)
        return None

    def end(self, conversation: "Conversation", code: ErrorCode) -> None:
        """Refuse the rest of `conversation`: tell its root caller (once), end its parked
        units, cancel its running handlers."""
        conversation.ended = conversation.ended or code
        self.reporter.tell_root(conversation, code)
        for state in self.slots.take_out(conversation):
            self.fail(state, code, f"the conversation was ended ({code})")
        self.handlers.cancel(conversation)

    def cancel(self, session: "Session", thread_id: str, *, owner: bool = False) -> bool:
        """Cancel the conversation `session` started as `thread_id` (the `owner`, on the
        Unix socket: any open conversation by the thread id its client used); False if
        none is open."""
        conversation = self.stores.threads.find(session, session.name, thread_id)
        if conversation is None and owner:
            conversation = next((c for c in self.stores.threads.open_conversations() if c.external_id == thread_id), None)
        if conversation is None or conversation.ended is not None:
            return False
        self.end(conversation, ErrorCode.CANCELLED)
        return True

    def tick(self) -> None:
        """End conversations past their deadline, forget idle ones; again in a second."""
        now = self.clock()
        deadline = self.limits.conversation_timeout_s
        for conversation in self.stores.threads.open_conversations():
            if conversation.ended is None and now - conversation.started > deadline:
                self.end(conversation, ErrorCode.CONVERSATION_TIMEOUT)
        self.stores.sweep(now)
        self._timer = asyncio.get_running_loop().call_later(TICK_S, self.tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
