"""What happened, as it happens: the pump's hop events, and the log lines made from them.

Every unit that ends is one `HopEvent`: a message handled by a listener, a reply
delivered to a client, or a refusal; with the conversation id its client used (the same
id appears in logs, dead letters and `status`), who sent it to whom, its root tag, its
size, its outcome and how long it took from acceptance. `Events` hands them to its
observers (the `watch` command, the live page) and writes the log:

- DEBUG: one line per hop;
- INFO: one line per finished external conversation.

Nothing is built when nobody listens and DEBUG is off: the hot path pays one check.
A payload preview (the payload's XML, cut short) is made only while an observer asked
for previews. `Events.queue()` gives an async reader (the live page's `/events`) a
bounded buffer: a reader that falls behind loses events, counted, and never slows the pump.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from lxml import etree

from agentserver.message_bus.message_state import Delivery, MessageState

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["HopEvent", "HopQueue", "Events", "conversation_id", "PREVIEW_CHARS"]

log = logging.getLogger("agentserver.pump")
hops_log = logging.getLogger("agentserver.hops")

Observer = Callable[["HopEvent"], None]

PREVIEW_CHARS = 400  # a payload preview is cut here
_XMLNS = re.compile(r'\s+xmlns(?::[\w.-]+)?="[^"]*"')


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
    preview: str = ""  # the payload's XML, at most PREVIEW_CHARS (only while an observer asked for previews)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class HopQueue:
    """One reader's bounded buffer of hop events: `put` never waits; when the buffer is
    full the event is dropped and counted in `dropped`."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[HopEvent] = asyncio.Queue(size)
        self.dropped = 0
        self._stop: Callable[[], None] = lambda: None

    def put(self, event: "HopEvent") -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def get(self) -> "HopEvent":
        return await self._queue.get()

    def get_nowait(self) -> "HopEvent | None":
        """The next buffered event, or None if there is none."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        """Stop receiving (the events already buffered can still be read)."""
        self._stop()

    def __enter__(self) -> "HopQueue":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Events:
    def __init__(self) -> None:
        self._observers: list[Observer] = []
        self._previewers: list[Observer] = []  # observers that want payload previews

    def subscribe(self, observer: Observer, *, previews: bool = False) -> Callable[[], None]:
        """Call `observer` with every hop from now on (with payload previews if asked); returns how to stop."""
        self._observers.append(observer)
        if previews:
            self._previewers.append(observer)
        return lambda: self._remove(observer)

    def queue(self, size: int = 1000, *, previews: bool = True) -> HopQueue:
        """A bounded buffer of the hops from now on, for an async reader; `close()` it when done."""
        hops = HopQueue(size)
        hops._stop = self.subscribe(hops.put, previews=previews)
        return hops

    def _remove(self, observer: Observer) -> None:
        for observers in (self._observers, self._previewers):
            if observer in observers:
                observers.remove(observer)

    def unit_ended(self, state: MessageState) -> None:
        if not self._observers and not hops_log.isEnabledFor(logging.DEBUG):
            return
        event = _hop(state, bool(self._previewers))
        hops_log.debug("hop conversation=%s %s -> %s <%s> %dB %s %.1fms", event.conversation, event.sender, event.to,
                       event.root_tag, event.bytes, event.outcome, event.duration_s * 1e3)
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:  # an observer must never break the pump
                log.exception("hop observer %r failed; removed", observer)
                self._remove(observer)

    def conversation_ended(self, conversation: "Conversation", now: float) -> None:
        if conversation.external_id is not None:
            log.info("conversation %s of %s ended%s: %d units, %d hops, %.3fs", conversation.external_id,
                     conversation.client, f" ({conversation.ended})" if conversation.ended else "", conversation.units,
                     conversation.hops, now - conversation.started)


def _hop(state: MessageState, previews: bool = False) -> HopEvent:
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
                    duration_s=time.perf_counter() - state.born, message_id=state.message_id, call_id=state.call_id,
                    preview=_preview(state) if previews else "")


def _preview(state: MessageState) -> str:
    """The payload's XML without namespace declarations (the raw bytes for a unit refused
    before its payload was found), cut at PREVIEW_CHARS. Not escaped: readers escape it."""
    if state.payload_element is not None:
        text = _XMLNS.sub("", etree.tostring(state.payload_element, encoding="unicode", with_tail=False))
    else:
        text = state.raw[:PREVIEW_CHARS + 1].decode("utf-8", "replace") if state.raw else ""
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"
