"""The in-process client: an external sender living in the pump's own process.

    async with pump.client("tester") as client:
        thread_id = await client.send(Greeting(name="Ada"), to="greeter")
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=5)

It takes the same path as a socket client: it is attached to the pump under its name
(a session of its own) and its envelopes go through `inject` with that session, the
two calls the socket server makes for each connection. Frames that no `ask` is
waiting for wait in a bounded inbox: `receive()` or `async for` (see sender.py).
"""

from __future__ import annotations

from typing import Protocol

from agentserver.message_bus.mailboxes import Mailbox, Session
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.sender import ExternalSender

__all__ = ["LocalClient"]


class _Pump(Protocol):
    """What the client needs of the pump (StreamPump has it)."""

    def attach(self, name: str, mailbox: Mailbox) -> Session: ...
    def detach(self, session: Session) -> None: ...
    def cancel(self, session: Session, thread_id: str) -> bool: ...
    async def inject(self, raw: bytes, *, session: Session | None = None, from_id: str | None = None,
                     thread_id: str | None = None) -> None: ...

    @property
    def ctx(self) -> PipelineContext: ...


class LocalClient(ExternalSender):
    def __init__(self, pump: _Pump, name: str, *, inbox_size: int = 1000) -> None:
        super().__init__(name, pump.ctx.xml, inbox_size=inbox_size, payload_types=pump.ctx.routes.payload_types)
        self.pump = pump
        self.session: Session | None = None

    async def __aenter__(self) -> "LocalClient":
        self.session = self.pump.attach(self.name, self._deliver)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            self.pump.detach(self.session)
        self._closed(ConnectionError(f"client {self.name!r} closed"))

    async def cancel(self, thread_id: str) -> bool:
        """Cancel this client's conversation `thread_id`: its handlers stop and a SystemError
        `cancelled` arrives on that thread. False if it is not open (any more)."""
        return self.session is not None and self.pump.cancel(self.session, thread_id)

    async def _want_stream(self, thread_id: str) -> None:
        if self.session is not None:
            self.session.streaming.add(thread_id)

    def _unwant_stream(self, thread_id: str) -> None:
        if self.session is not None:
            self.session.streaming.discard(thread_id)

    async def _transmit(self, raw: bytes, thread_id: str) -> None:
        await self.pump.inject(raw, session=self.session, thread_id=thread_id)
