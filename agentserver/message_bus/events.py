"""What happened, as it happens: the pump's hop events, and the log lines made from them.

Every unit that ends is one `HopEvent`: a message handled by a listener, a reply
delivered to a client, or a refusal; with the conversation id its client used (the same
id appears in logs, dead letters and `status`), who sent it to whom, its root tag, its
size, its outcome and how long it took from acceptance. `Events` hands them to its
observers (the `watch` command, the live page) and writes the log:

- DEBUG: one line per hop;
- INFO: one line per finished external conversation.

Nothing is built when nobody listens and DEBUG is off: the hot path pays one check.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from lxml import etree

from agentserver.message_bus.message_state import Delivery, MessageState

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["HopEvent", "Events", "conversation_id"]

log = logging.getLogger("agentserver.pump")
hops_log = logging.getLogger("agentserver.hops")

Observer = Callable[["HopEvent"], None]


def conversation_id(conversation: "Conversation | None") -> str:
    """The id a conversation goes by everywhere: the thread id its client used, or (for the
    pump's own conversations, Boot) `system:N`."""
    if conversation is None:
        return ""
    return conversation.external_id or f"{conversation.client}:{conversation.id}"


@dataclass(frozen=True, slots=True)
class HopEvent:
    time: float  # when it ended (seconds since the epoch)
    conversation: str  # the id its client used
    thread: str  # the thread it was handled on
    sender: str
    to: str  # a listener, a client, or what <to> said
    root_tag: str
    bytes: int  # the envelope's size
    outcome: str  # "handled", or the error code
    duration_s: float  # from acceptance to outcome
    message_id: str
    call_id: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Events:
    def __init__(self) -> None:
        self._observers: list[Observer] = []

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer` with every hop from now on; returns how to stop."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    def unit_ended(self, state: MessageState) -> None:
        if not self._observers and not hops_log.isEnabledFor(logging.DEBUG):
            return
        event = _hop(state)
        hops_log.debug("hop conversation=%s %s -> %s <%s> %dB %s %.1fms", event.conversation, event.sender, event.to,
                       event.root_tag, event.bytes, event.outcome, event.duration_s * 1e3)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer must never break the pump
                log.exception("hop observer %r failed; removed", observer)
                self._observers.remove(observer)

    def conversation_ended(self, conversation: "Conversation", now: float) -> None:
        if conversation.external_id is not None:
            log.info("conversation %s of %s ended%s: %d units, %d hops, %.3fs", conversation.external_id,
                     conversation.client, f" ({conversation.ended})" if conversation.ended else "", conversation.units,
                     conversation.hops, now - conversation.started)


def _hop(state: MessageState) -> HopEvent:
    route = state.route
    thread = route.thread if route is not None else state.thread
    conversation = thread.conversation if thread is not None else state.conversation
    if isinstance(route, Delivery):
        to = route.listener.name
    elif route is not None:
        to = route.client
    else:
        to = state.to or ""
    size = len(state.raw) if state.raw else len(etree.tostring(state.root)) if state.root is not None else 0
    error = state.error
    return HopEvent(time=time.time(), conversation=conversation_id(conversation), thread=thread.id if thread else "",
                    sender=state.sender or (state.origin.name or ""), to=to, root_tag=state.root_tag, bytes=size,
                    outcome=str(error.code) if error is not None else "handled",
                    duration_s=time.perf_counter() - state.born, message_id=state.message_id, call_id=state.call_id)
