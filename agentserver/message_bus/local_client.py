"""The in-process client: an external sender living in the pump's own process.

    async with pump.client("tester") as client:
        thread_id = await client.send(Greeting(name="Ada"), to="greeter")
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=5)

It takes the same path as a socket client: it is attached to the pump under its name
and its envelopes go through `inject` with that name as the trusted sender, exactly
the two calls the socket server makes for each connection. Frames that no `ask` is
waiting for wait in a bounded inbox: `receive()` or `async for` (see sender.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentserver.sender import ExternalSender

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["LocalClient"]


class LocalClient(ExternalSender):
    def __init__(self, pump: "StreamPump", name: str, *, inbox_size: int = 1000) -> None:
        super().__init__(name, pump.ctx.xml, inbox_size=inbox_size, payload_types=pump.routes.payload_types)
        self.pump = pump

    async def __aenter__(self) -> "LocalClient":
        self.pump.attach(self.name, self._deliver)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.pump.detach(self.name)
        self._closed(ConnectionError(f"client {self.name!r} closed"))

    async def _transmit(self, raw: bytes, thread_id: str) -> None:
        await self.pump.inject(raw, thread_id=thread_id, from_id=self.name)
