"""What every external sender does, in-process or over a socket: name itself, wrap
payloads in envelopes, `send`, `ask` and keep the frames nobody asked for.

Subclasses say how bytes leave (`_transmit`) and call `_deliver` with each frame that
arrives. `ask` registers a waiter on a fresh thread id before sending, so the reply
cannot race it; frames for no waiter go to a bounded inbox (`receive`, `async for`),
and what does not fit is counted in `dropped`.

Where the server confirms envelopes (the in-process client, and protocol version 2 over
a socket), each one gets exactly one ack or one `<huh>`, matched by its number (`seq`):
`send` returns on the ack, as an `Accepted` thread id, or raises HuhError.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any, AsyncIterator, Callable

from lxml import etree

from agentserver.envelope import build_envelope
from agentserver.outbound import AskTimeout, HuhError, Outbound, OutboundKind, RemoteError, Reply
from agentserver.primitives import SystemError
from agentserver.xmlsafe import SafeXml

__all__ = ["ExternalSender", "Accepted", "payload_to_element", "outbound_result"]

_CLOSED = None  # inbox sentinel: the sender is closed


def payload_to_element(payload: Any, xml: SafeXml, payload_types: Any = None) -> etree._Element:
    """An @xmlify object, or the XML text of exactly one payload element, as an element.

    With the pump's `payload_types`, objects are written by their class's codec."""
    if isinstance(payload, (str, bytes, bytearray)):
        elements = xml.fragment(bytes(payload) if not isinstance(payload, str) else payload)
        if len(elements) != 1:
            raise ValueError(f"expected one payload element, got {len(elements)}")
        return elements[0]
    if hasattr(payload, "xml_value"):
        payload_type = payload_types.for_class(type(payload)) if payload_types is not None else None
        return payload_type.to_element(payload) if payload_type is not None else payload.xml_value().getroot()
    raise TypeError(f"{type(payload).__name__} is neither an @xmlify payload nor XML text")


def outbound_result(outbound: Outbound) -> Reply:
    """The Reply an `ask` returns for `outbound`, or the AskError it raises."""
    if outbound.kind == "huh":
        raise HuhError(outbound.code, outbound.message, outbound.thread_id)
    payload = outbound.payload
    if isinstance(payload, SystemError):
        raise RemoteError(payload.code, payload.message, outbound.thread_id, outbound.sender)
    if isinstance(payload, etree._Element) and payload.tag == "SystemError":  # read off a socket
        raise RemoteError(payload.findtext("Code") or "error", payload.findtext("Message") or "", outbound.thread_id, outbound.sender)
    return Reply(payload, outbound.sender, outbound.thread_id, outbound)


class Accepted(str):
    """What `send` returns: the thread id (a str), with the server's confirmation of it.

    `message_id` is the message's id (the one given, or the server's), `seq` its number on
    the connection; both are empty/None when the server confirms nothing (protocol 1)."""

    message_id: str
    seq: int | None

    def __new__(cls, thread_id: str, message_id: str = "", seq: int | None = None) -> "Accepted":
        accepted = super().__new__(cls, thread_id)
        accepted.message_id, accepted.seq = message_id, seq
        return accepted

    @property
    def thread_id(self) -> str:
        return str(self)


class ExternalSender:
    def __init__(self, name: str, xml: SafeXml, *, inbox_size: int, payload_types: Any = None) -> None:
        self.name = name
        self._xml = xml
        self._payload_types = payload_types
        self._waiters: dict[str, asyncio.Future[Outbound]] = {}
        self._streams: dict[str, Callable[[str], None]] = {}  # thread id -> where its streamed text goes
        self._confirmations: dict[int, tuple[str, asyncio.Future[Outbound]]] = {}  # seq -> (thread id, its ack or huh)
        self._inbox: asyncio.Queue[Outbound | None] = asyncio.Queue(inbox_size)
        self.dropped = 0
        # new thread ids: UUID-shaped, a random prefix per sender and a counter (uuid4
        # each time cost more than the rest of building an envelope)
        self._thread_prefix = str(uuid.uuid4())[:24]
        self._thread_numbers = itertools.count(1)

    async def _transmit(self, raw: bytes, thread_id: str) -> asyncio.Future[Outbound] | None:
        """Send one envelope; returns what will hold its ack or `<huh>` when the server
        confirms envelopes (from `_expect_confirmation`, called before the bytes leave)."""
        raise NotImplementedError

    def _expect_confirmation(self, seq: int, thread_id: str) -> asyncio.Future[Outbound]:
        confirmation: asyncio.Future[Outbound] = asyncio.get_running_loop().create_future()
        self._confirmations[seq] = (thread_id, confirmation)
        return confirmation

    def envelope(self, payload: Any, *, to: str | None = None, thread_id: str | None = None,
                 message_id: str | None = None) -> tuple[bytes, str]:
        """(envelope bytes, thread id) for `payload` sent by this client; `message_id`:
        the message's own id (the server makes one otherwise)."""
        thread_id = thread_id or f"{self._thread_prefix}{next(self._thread_numbers):012x}"
        element = payload_to_element(payload, self._xml, self._payload_types)
        root = build_envelope(element, sender=self.name, to=to, thread=thread_id, message_id=message_id)
        return etree.tostring(root), thread_id

    async def send(self, payload: Any, *, to: str | None = None, thread_id: str | None = None,
                   message_id: str | None = None, timeout: float | None = 30.0) -> Accepted:
        """Send one payload (an @xmlify object or XML text) and wait for the server to accept it.

        Returns the thread id (new unless given) as an `Accepted`, once the server has
        acked the message (with a journal: once it is on disk); raises HuhError if the
        server refused it, TimeoutError if no answer came within `timeout` seconds.
        Give `message_id` (a UUID) to resend safely: a repeat of an id the server accepted
        in the last minutes is acked again and not processed twice."""
        raw, thread_id = self.envelope(payload, to=to, thread_id=thread_id, message_id=message_id)
        async with asyncio.timeout(timeout):
            confirmation = await self._transmit(raw, thread_id)
            if confirmation is None:  # a server that confirms nothing (protocol 1): sent is all we know
                return Accepted(thread_id, message_id or "")
            outbound = await confirmation
        if outbound.kind is OutboundKind.HUH:
            raise HuhError(outbound.code, outbound.message, thread_id)
        return Accepted(thread_id, outbound.message, outbound.seq)

    async def ask(self, payload: Any, *, to: str | None = None, timeout: float = 30.0,
                  on_token: Callable[[str], None] | None = None) -> Reply:
        """Send and wait for the first frame on that thread: a Reply, or HuhError/RemoteError/AskTimeout.

        With `on_token`, the answering agent's text is passed to it as its model writes it
        (an LLM agent streams; other handlers send nothing); the reply is validated XML."""
        raw, thread_id = self.envelope(payload, to=to)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[thread_id] = waiter
        if on_token is not None:
            self._streams[thread_id] = on_token
            await self._want_stream(thread_id)
        try:
            async with asyncio.timeout(timeout):
                await self._transmit(raw, thread_id)
                outbound = await waiter  # a <huh> for it comes here too
        except TimeoutError:
            raise AskTimeout(f"no reply on thread {thread_id} within {timeout}s") from None
        finally:
            self._waiters.pop(thread_id, None)
            if self._streams.pop(thread_id, None) is not None:
                self._unwant_stream(thread_id)
        return outbound_result(outbound)

    async def _want_stream(self, thread_id: str) -> None:
        """Ask the server to stream the answer on `thread_id` (subclasses say how)."""
        raise NotImplementedError(f"{type(self).__name__} cannot stream answers")

    def _unwant_stream(self, thread_id: str) -> None:
        """The ask on `thread_id` is over: streaming it is no longer wanted."""

    def _deliver(self, outbound: Outbound) -> bool:
        """A frame arrived: wake its `send` or `ask`, or keep it for `receive`. False if it had to be dropped."""
        if outbound.seq is not None:  # the one ack or <huh> of an envelope of ours
            thread_id, confirmation = self._confirmations.pop(outbound.seq, (outbound.thread_id, None))
            if confirmation is not None and not confirmation.done():
                confirmation.set_result(outbound)
            if outbound.kind is OutboundKind.ACK:
                return True
            waiter = self._waiters.pop(thread_id, None)  # an ask hears its <huh>, whatever thread it names
            if waiter is not None and not waiter.done():
                waiter.set_result(outbound)
                return True
            if confirmation is not None:  # a send hears it
                return True
        elif outbound.kind is OutboundKind.STREAM:
            on_token = self._streams.get(outbound.thread_id)
            if on_token is not None:
                on_token(outbound.message)
            return True
        waiter = self._waiters.pop(outbound.thread_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outbound)
            return True
        try:
            self._inbox.put_nowait(outbound)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False

    def _closed(self, error: BaseException) -> None:
        """No more frames will arrive: fail the waiting asks, end `receive` and iteration."""
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        for _, confirmation in self._confirmations.values():
            if not confirmation.done():
                confirmation.set_exception(error)
        self._confirmations.clear()
        try:
            self._inbox.put_nowait(_CLOSED)
        except asyncio.QueueFull:
            pass

    async def receive(self) -> Outbound:
        """The next frame that no `ask` was waiting for. Raises ConnectionError once closed."""
        item = await self._inbox.get()
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)
            raise ConnectionError("closed")
        return item

    def __aiter__(self) -> AsyncIterator[Outbound]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Outbound]:
        while True:
            try:
                yield await self.receive()
            except ConnectionError:
                return
