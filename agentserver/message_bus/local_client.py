"""The in-process client: an external sender living in the pump's own process.

    async with pump.client("tester") as client:
        thread_id = await client.send(Greeting(name="Ada"), to="greeter")
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=5)

It takes the same path as a socket client: it is attached to the pump under its name
(a session of its own) and its envelopes go through `inject` with that session and a
number, the calls the socket server makes for each connection: `send` returns on the
envelope's ack. Frames that no `ask` is
waiting for wait in a bounded inbox: `receive()` or `async for` (see sender.py).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

from agentserver.message_bus.conversations import ConversationGuard
from agentserver.message_bus.mailboxes import Mailboxes, Session
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.outbound import Outbound
from agentserver.sender import ExternalSender

__all__ = ["LocalClient"]


class _Pump(Protocol):
    """What the client needs of the pump (StreamPump has it)."""

    mailboxes: Mailboxes
    guard: ConversationGuard

    async def inject(self, raw: bytes, *, session: Session | None = None, from_id: str | None = None,
                     thread_id: str | None = None, seq: int | None = None) -> None: ...

    @property
    def ctx(self) -> PipelineContext: ...


class LocalClient(ExternalSender):
    def __init__(self, pump: _Pump, name: str, *, inbox_size: int = 1000) -> None:
        super().__init__(name, pump.ctx.xml, inbox_size=inbox_size, payload_types=pump.ctx.routes.payload_types)
        self.pump = pump
        self.session: Session | None = None
        self._seqs = itertools.count(1)  # its envelopes' numbers: each gets one ack or one <huh>

    async def __aenter__(self) -> "LocalClient":
        self.session = self.pump.mailboxes.attach(self.name, self._deliver)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            self.pump.mailboxes.detach(self.session)
        self._closed(ConnectionError(f"client {self.name!r} closed"))

    async def cancel(self, thread_id: str) -> bool:
        """Cancel this client's conversation `thread_id`: its handlers stop and a SystemError
        `cancelled` arrives on that thread. False if it is not open (any more)."""
        return self.session is not None and self.pump.guard.cancel(self.session, thread_id)

    async def _want_stream(self, thread_id: str) -> None:
        if self.session is not None:
            self.session.streaming.add(thread_id)

    def _unwant_stream(self, thread_id: str) -> None:
        if self.session is not None:
            self.session.streaming.discard(thread_id)

    async def _transmit(self, raw: bytes, thread_id: str) -> asyncio.Future[Outbound] | None:
        seq = next(self._seqs)
        confirmation = self._expect_confirmation(seq, thread_id)
        await self.pump.inject(raw, session=self.session, thread_id=thread_id, seq=seq)
        return confirmation
