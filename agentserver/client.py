"""The socket client: talk to a running organism from another process.

    from agentserver.client import connect

    async with await connect("run/agentserver.sock", name="me") as client:
        reply = await client.ask("<Greeting><Name>Ada</Name></Greeting>", to="greeter")
        print(reply.xml.decode())
        thread_id = await client.send("<Greeting><Name>Bob</Name></Greeting>", to="greeter")
        async for frame in client:          # replies no ask was waiting for
            ...

`ask` returns a `Reply` (payload = the payload element, xml = its bytes) or raises
`HuhError` (the server refused the message), `RemoteError` (the conversation ended in
a SystemError) or `AskTimeout`. The CLI verbs `send`, `ask`, `status` and
`deadletters` use this client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections import deque
from typing import Any

from lxml import etree

from agentserver import control
from agentserver.envelope import MESSAGE, payload_elements, read_huh, read_meta
from agentserver.framing import Frame, FrameDecoder, encode_frame
from agentserver.outbound import HuhError, Outbound, OutboundKind
from agentserver.codes import canned
from agentserver.sender import ExternalSender
from agentserver.xmlsafe import SafeXml, UnsafeXml

__all__ = ["connect", "Client", "ControlError", "DEFAULT_SOCKET"]

DEFAULT_SOCKET = "run/agentserver.sock"


class ControlError(ConnectionError):
    """The server refused a control request (hello, status, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


async def connect(
    socket_path: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    tcp: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    max_frame: int = 16 << 20,
) -> "Client":
    """Connect over the Unix socket (default run/agentserver.sock) or `tcp="HOST:PORT"`.

    Sends a hello naming this client (default: a random `client-xxxxxxxx`); over TCP
    the token defaults to $AGENTSERVER_TOKEN.
    """
    if tcp:
        host, _, port = tcp.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
        token = token if token is not None else os.environ.get("AGENTSERVER_TOKEN")
    else:
        path = str(socket_path or os.environ.get("AGENTSERVER_SOCKET") or DEFAULT_SOCKET)
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    client = Client(reader, writer, name or f"client-{uuid.uuid4().hex[:8]}", max_frame=max_frame)
    try:
        await asyncio.wait_for(client._hello(token), timeout)
    except BaseException:
        await client.close()
        raise
    return client


class Client(ExternalSender):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, *, max_frame: int, inbox_size: int = 10_000) -> None:
        super().__init__(name, SafeXml(max_frame), inbox_size=inbox_size)
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_frame)
        self._control: deque[asyncio.Future[control.ControlRequest]] = deque()
        self._is_closed = False
        self._server_max_frame: int | None = None  # from the server's welcome
        self._read_task = asyncio.create_task(self._read_loop(), name=f"client-reader:{name}")

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- control requests ------------------------------------------------------------
    async def _hello(self, token: str | None) -> None:
        answer = await self._request(control.hello(self.name, token))
        if answer.verb != "welcome":
            raise ControlError(answer.attrs.get("code", "refused"), answer.text)
        limit = answer.attrs.get("max-frame", "")
        self._server_max_frame = int(limit) if limit.isdigit() else None

    async def _request(self, frame: bytes) -> control.ControlRequest:
        future = asyncio.get_running_loop().create_future()
        self._control.append(future)
        await self._write(frame)
        return await future

    async def _control_result(self, verb: str, **attrs: str) -> Any:
        answer = await self._request(control.request(verb, **attrs))
        if answer.verb != "result":
            raise ControlError(answer.attrs.get("code", "error"), answer.text)
        return json.loads(answer.text)

    async def status(self) -> dict:
        """The server's counters, queues and open conversations."""
        return await self._control_result("status")

    async def deadletters(self, limit: int | None = None) -> list[dict]:
        """The most recent dead letters (oldest first)."""
        return await self._control_result("deadletters", **({"limit": str(limit)} if limit else {}))

    async def send_raw(self, frame: bytes) -> None:
        """Send the bytes of one frame as they are (tests, tools)."""
        await self._write(frame)

    # -- I/O ------------------------------------------------------------------------
    async def _transmit(self, raw: bytes, thread_id: str) -> None:
        # the server refuses an oversize frame from its header, before it can read the
        # thread id: say so here, on the right thread, as the in-process client would
        if self._server_max_frame is not None and len(raw) > self._server_max_frame:
            raise HuhError("too-large", canned("too-large"), thread_id)
        await self._write(raw)

    async def _write(self, frame: bytes) -> None:
        if self._is_closed:
            raise ConnectionError("client is closed")
        self._writer.write(encode_frame(frame))
        await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                for event in self._decoder.feed(data):
                    if isinstance(event, Frame):
                        self._on_frame(event.data)
        except (ConnectionError, OSError):
            pass
        finally:
            self._is_closed = True
            error = ConnectionError("connection closed by the server")
            for future in self._control:
                if not future.done():
                    future.set_exception(error)
            self._control.clear()
            self._closed(error)

    def _on_frame(self, data: bytes) -> None:
        try:
            root = self._xml.parse(data)
        except (UnsafeXml, etree.XMLSyntaxError):
            return
        request = control.read_control(root)
        if request is not None:
            if self._control:
                future = self._control.popleft()
                if not future.done():
                    future.set_result(request)
            return
        if root.tag == MESSAGE:
            self._deliver(_outbound(root, data))

    async def close(self) -> None:
        self._is_closed = True
        if not self._read_task.done():
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.close()
            await self._writer.wait_closed()


def _outbound(root: etree._Element, data: bytes) -> Outbound:
    meta = read_meta(root)
    payloads = payload_elements(root)
    payload = payloads[0] if payloads else None
    if payload is not None:
        huh = read_huh(payload)
        if huh is not None:
            return Outbound(OutboundKind.HUH, meta.thread, meta.sender, data, code=huh[0], message=huh[1])
    xml = etree.tostring(payload, method="c14n", exclusive=True) if payload is not None else b""
    return Outbound(OutboundKind.REPLY, meta.thread, meta.sender, data, payload, xml)
