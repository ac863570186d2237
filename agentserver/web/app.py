"""The HTTP server: aiohttp on a loopback address, owned by whoever runs the pump.

    async with HttpServer(pump, "127.0.0.1:9100") as http:
        print(http.url)

It keeps the most recent hop events (so a page opened late still shows the recent
conversations) and gives each `/events` reader a bounded queue of its own: a browser
that cannot keep up misses events (counted, and told), and the pump never waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from agentserver.message_bus.events import HopEvent, HopQueue
from agentserver.web.metrics import PumpCollector

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["HttpServer"]

log = logging.getLogger("agentserver.http")

RECENT_HOPS = 2000  # hop events kept for pages opened later
READER_QUEUE = 1000  # hop events buffered per /events reader before they are dropped
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and browsers from giving up
SHUTDOWN_S = 2.0  # how long open requests get when the server stops


class HttpServer:
    def __init__(self, pump: "StreamPump", address: str, *, recent: int = RECENT_HOPS,
                 reader_queue: int = READER_QUEUE) -> None:
        host, _, port = address.rpartition(":")
        self.pump = pump
        self.host, self.port = host.strip("[]"), int(port)
        self.reader_queue = reader_queue
        self.registry = CollectorRegistry(auto_describe=True)  # this server's own: two pumps share nothing
        self._dropped_by_gone = 0  # hop events dropped by /events readers that have left
        self._readers: set[HopQueue] = set()
        self._recent: deque[HopEvent] = deque(maxlen=recent)
        self._unsubscribe: Any = None
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.registry.register(PumpCollector(pump, lambda: self.events_dropped))

    @property
    def events_dropped(self) -> int:
        """Hop events that /events readers (past and present) were too slow to take."""
        return self._dropped_by_gone + sum(reader.dropped for reader in self._readers)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Listen; returns the URL (with the port taken, if it was 0). Raises OSError if the address is taken."""
        app = web.Application()
        app.add_routes([web.get("/", self._page), web.get("/metrics", self._metrics), web.get("/healthz", self._healthz),
                        web.get("/status", self._status), web.get("/events", self._events)])
        self._unsubscribe = self.pump.events.subscribe(self._recent.append, previews=True)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        self.port = self._runner.addresses[0][1]
        log.info("http on %s (/metrics /healthz /status /events, live page /)", self.url)
        return self.url

    async def stop(self) -> None:
        self._closing.set()  # /events readers end their streams
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "HttpServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ routes
    async def _page(self, request: web.Request) -> web.Response:
        page = resources.files("agentserver.web").joinpath("live.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self.pump.status(), default=str), content_type="application/json")

    async def _healthz(self, request: web.Request) -> web.Response:
        task = self.pump.task
        problems = []
        if task is None or task.done():
            problems.append("the pump is not running")
        elif self.pump.closed:
            problems.append("the pump is shutting down")
        journal = self.pump.durability.status()
        if journal is not None and journal.get("replaying"):
            problems.append(f"replaying the journal: {journal['replaying']} units not done last time still to go")
        if journal is not None and journal.get("failed"):
            problems.append(f"the journal stopped writing: {journal['failed']}")
        transport = self.pump.handlers.transport
        members = transport.status() if transport is not None else None
        if members is not None and not members["connected"]:
            problems.append(f"NATS at {members['transport']} is away: units wait until it is back")
        body = {"ok": not problems, "problems": problems, "journal": journal, "members": members}
        return web.Response(text=json.dumps(body, default=str), content_type="application/json",
                            status=503 if problems else 200)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the recent hops, then each hop as it ends (`event: hop`);
        `event: dropped` when this reader fell behind and missed some."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        backlog = list(self._recent)  # taken together with the subscription: no hop is missed or sent twice
        hops = self.pump.events.queue(self.reader_queue)
        self._readers.add(hops)
        closing = asyncio.ensure_future(self._closing.wait())
        reported = 0
        try:
            await response.write(b"retry: 2000\n" + b"".join(_sse("hop", e.as_dict()) for e in backlog))
            while not self._closing.is_set():
                getter = asyncio.ensure_future(hops.get())
                done, _ = await asyncio.wait({getter, closing}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    await response.write(b": keepalive\n\n")
                    continue
                chunk = [_sse("hop", getter.result().as_dict())]
                while len(chunk) < 200 and (event := hops.get_nowait()) is not None:  # what else waits: one write
                    chunk.append(_sse("hop", event.as_dict()))
                if hops.dropped != reported:
                    reported = hops.dropped
                    chunk.append(_sse("dropped", {"dropped": reported}))
                await response.write(b"".join(chunk))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            closing.cancel()
            hops.close()
            self._readers.discard(hops)
            self._dropped_by_gone += hops.dropped
        return response


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
