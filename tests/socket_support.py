"""Helpers for tests that talk to an in-process `Server` over real sockets: the `serve`
fixture, raw frame connections, and builders and readers of control frames."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from lxml import etree

from agentserver.control import CONTROL_NS
from agentserver.framing import Frame, FrameDecoder, encode_frame
from agentserver.server import Server
from tests.hostile_corpus import envelope
from tests.server_harness import config_text, free_port
from tests.support import HANG_GUARD

TOKEN = "s3cret"


def ctl(element: str) -> bytes:
    name, _, attrs = element.partition(" ")
    return f'<ctl:{name} xmlns:ctl="{CONTROL_NS}" {attrs}/>'.encode()


def hello(name: str, *, token: str | None = None, request_id: str = "1") -> bytes:
    token_attr = f' token="{token}"' if token is not None else ""
    return ctl(f'hello id="{request_id}" name="{name}" versions="1"{token_attr}')


def echo(sender: str, text: str = "x") -> bytes:
    return envelope(f"<Echo><Text>{text}</Text></Echo>", sender=sender)


def said(data: bytes) -> tuple[str, dict[str, str], str]:
    """(kind, attributes, text) of a control frame; ("huh", {code}, text) of a <huh>;
    ("reply", {}, payload) of anything else."""
    root = etree.fromstring(data)
    if isinstance(root.tag, str) and root.tag.startswith("{%s}" % CONTROL_NS):
        return etree.QName(root).localname, dict(root.attrib), root.text or ""
    huh = root.find("huh")
    if huh is not None:
        return "huh", {"code": huh.get("code", "")}, huh.text or ""
    return "reply", {}, etree.tostring(root[-1]).decode()


class Raw:
    """A socket that speaks frames, no client library."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 24)
        self.pending: list[bytes] = []

    @classmethod
    async def unix(cls, server: Server) -> "Raw":
        return cls(*await asyncio.open_unix_connection(str(server.socket_path)))

    @classmethod
    async def tcp(cls, server: Server) -> "Raw":
        assert server.tcp is not None
        host, _, port = server.tcp.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(encode_frame(frame) for frame in frames))
        await self.writer.drain()

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = HANG_GUARD) -> bytes:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by the server")
            self.pending.extend(e.data for e in self.decoder.feed(data) if isinstance(e, Frame))
        return self.pending.pop(0)

    async def closed(self, timeout: float = HANG_GUARD) -> list[bytes]:
        """Every frame until the server closes the connection (then this side closes too)."""
        frames = []
        while True:
            try:
                frames.append(await self.frame(timeout))
            except (ConnectionError, OSError):
                self.close()
                return frames

    def close(self) -> None:
        self.writer.close()


async def trickle(raw: Raw, data: bytes, *, seconds: float) -> list[bytes]:
    """Send `data` a byte at a time over `seconds` while reading; returns every frame the
    server sent until it closed the connection (the trickle stops there)."""
    closing = asyncio.ensure_future(raw.closed())
    try:
        for i in range(len(data)):
            if closing.done():
                break
            await raw.write(data[i : i + 1])
            await asyncio.sleep(seconds / len(data))
    except ConnectionError:
        pass  # cut off while trickling: that is the point
    return await closing


@pytest.fixture
async def serve(start):
    """`await serve(limits_yaml, tcp=True)`: a pump and a Server on a fresh socket (and a TCP
    port with TOKEN); stopped at the end of the test."""
    running: list[tuple[Server, Path]] = []

    async def _serve(extra: str = "", *, tcp: bool = False) -> Server:
        workdir = Path(tempfile.mkdtemp(prefix="as-"))  # short: AF_UNIX paths are limited
        pump = await start(config_text(extra))
        server = Server(pump, socket_path=workdir / "s.sock", tcp=f"127.0.0.1:{free_port()}" if tcp else None,
                        token=TOKEN if tcp else None)
        await server.start()
        running.append((server, workdir))
        return server

    yield _serve
    for server, workdir in running:
        await server.stop(HANG_GUARD)
        shutil.rmtree(workdir, ignore_errors=True)
