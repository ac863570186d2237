"""The in-process client: an external sender living in the pump's own process.

    async with pump.client("tester") as client:
        thread_id = await client.send(Greeting(name="Ada"), to="greeter")
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=5)

It takes the same path as a socket client (its envelopes go through `inject` with its
name as the trusted sender), so the socket server reuses it per connection. Frames that
no `ask` is waiting for wait in a bounded inbox: `receive()` or `async for`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator

from lxml import etree

from agentserver.envelope import build_envelope
from agentserver.outbound import AskTimeout, HuhError, Outbound, RemoteError, Reply
from agentserver.primitives import SystemError
from agentserver.xmlsafe import SafeXml

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["LocalClient", "payload_to_element", "outbound_result"]


def payload_to_element(payload: Any, xml: SafeXml) -> etree._Element:
    """An @xmlify object, or the XML text of exactly one payload element, as an element."""
    if isinstance(payload, (str, bytes, bytearray)):
        elements = xml.fragment(bytes(payload) if not isinstance(payload, str) else payload)
        if len(elements) != 1:
            raise ValueError(f"expected one payload element, got {len(elements)}")
        return elements[0]
    if hasattr(payload, "xml_value"):
        return payload.xml_value().getroot()
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
    return Reply(outbound.payload, outbound.sender, outbound.thread_id, outbound.payload_xml)


class LocalClient:
    def __init__(self, pump: "StreamPump", name: str, *, inbox_size: int = 1000) -> None:
        self.pump = pump
        self.name = name
        self._inbox: asyncio.Queue[Outbound] = asyncio.Queue(inbox_size)
        self._waiters: dict[str, asyncio.Future[Outbound]] = {}
        self.dropped = 0

    async def __aenter__(self) -> "LocalClient":
        self.pump.attach(self.name, self._receive)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.pump.detach(self.name)
        for waiter in self._waiters.values():
            waiter.cancel()
        self._waiters.clear()

    def _receive(self, outbound: Outbound) -> bool:
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

    def envelope(self, payload: Any, *, to: str | None = None, thread_id: str | None = None) -> tuple[bytes, str]:
        """(envelope bytes, thread id) for `payload` sent by this client."""
        thread_id = thread_id or str(uuid.uuid4())
        element = payload_to_element(payload, self.pump.ctx.xml)
        return etree.tostring(build_envelope(element, sender=self.name, to=to, thread=thread_id)), thread_id

    async def send(self, payload: Any, *, to: str | None = None, thread_id: str | None = None) -> str:
        """Send one payload; returns the thread id (new unless given)."""
        raw, thread_id = self.envelope(payload, to=to, thread_id=thread_id)
        await self.pump.inject(raw, thread_id=thread_id, from_id=self.name)
        return thread_id

    async def ask(self, payload: Any, *, to: str | None = None, timeout: float = 30.0) -> Reply:
        """Send and wait for the first frame on that thread: a Reply, or HuhError/RemoteError/AskTimeout."""
        raw, thread_id = self.envelope(payload, to=to)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[thread_id] = waiter
        try:
            await self.pump.inject(raw, thread_id=thread_id, from_id=self.name)
            outbound = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise AskTimeout(f"no reply on thread {thread_id} within {timeout}s") from None
        finally:
            self._waiters.pop(thread_id, None)
        return outbound_result(outbound)

    async def receive(self) -> Outbound:
        """The next frame no `ask` was waiting for."""
        return await self._inbox.get()

    def __aiter__(self) -> AsyncIterator[Outbound]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Outbound]:
        while True:
            yield await self._inbox.get()
