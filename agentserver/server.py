"""The socket server: other processes talk to the organism over a local socket.

One `Server` owns a pump's listening sockets and its connections. Each connection is
one external sender (`Connection`): its frames go to `pump.inject` with the
connection's name as the trusted sender, and the pump hands it replies and `<huh>`s
through a bounded outbox that a writer task drains.

Flow control, both ways:
- a client sending faster than the pump drains is slowed by the server no longer
  reading from it (`inject` waits while the intake is full);
- a client that does not read its replies only fills its own outbox; past
  `limits.client_outbox` frames, new frames for it are dropped, counted and logged,
  and the pump and the other clients never wait for it.

Identity: the first `<ctl:hello name=...>` (or, without one, the first envelope's
`<from>`) names the connection. A name that is a listener, a reserved name, or already
connected is refused with a `<huh>`; those frames go nowhere. Over TCP the first frame
must be a hello carrying `AGENTSERVER_TOKEN`; a wrong token closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

from lxml import etree

from agentserver import control
from agentserver.limits import NAME_PATTERN, is_reserved
from agentserver.envelope import FROM, MESSAGE, META, build_huh
from agentserver.framing import FrameDecoder, Oversize, encode_frame
from agentserver.message_bus.mailboxes import Session
from agentserver.message_bus.stream_pump import PumpClosed, ShutdownReport, StreamPump
from agentserver.outbound import Outbound
from agentserver.codes import canned
from agentserver.xmlsafe import UnsafeXml

__all__ = ["Server", "ServerError", "prepare_socket_path", "bind_private_unix_socket"]

log = logging.getLogger("agentserver.server")


class ServerError(RuntimeError):
    """The server cannot start; the message says why and what to do."""


def prepare_socket_path(path: Path) -> None:
    """Make `path` free for a new server: create its directory, replace a stale socket.

    Refuses (ServerError) when a live server answers on it, or when it is not a socket.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s (no server answers on it)", path)
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ServerError(f"cannot tell whether a server answers on {path}: {exc}") from None
    finally:
        probe.close()
    raise ServerError(f"another server is answering on {path}; stop it first, or pass --socket PATH")


def bind_private_unix_socket(path: Path) -> socket.socket:
    """A Unix socket bound at `path` that only this user can connect to (mode 0600).

    Made without touching the process umask: it is bound in a fresh private directory
    (mode 0700, so nobody can connect before the chmod), then renamed into place."""
    private = Path(tempfile.mkdtemp(prefix=".as-", dir=path.parent))
    staged = private / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        os.chmod(staged, 0o600)
        os.rename(staged, path)
    except BaseException:
        sock.close()
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return sock


class Connection:
    def __init__(self, server: "Server", reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, needs_token: bool) -> None:
        self.server = server
        self.pump = server.pump
        self.reader = reader
        self.writer = writer
        self.needs_token = needs_token
        self.authenticated = not needs_token
        self.name: str | None = None
        self.session: Session | None = None
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue(server.outbox_size)
        self.dropped = 0
        self._writer_task: asyncio.Task | None = None
        self._closing = False
        peer = writer.get_extra_info("peername")
        self.label = f"tcp:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"

    # -- reading ---------------------------------------------------------------
    async def run(self) -> None:
        self._writer_task = asyncio.create_task(self._write_loop(), name=f"writer:{self.label}")
        decoder = FrameDecoder(self.pump.config.limits.max_message_bytes)
        try:
            while not self._closing:
                data = await self.reader.read(65536)
                if not data or self._closing:  # closed while reading: take nothing more from it
                    break
                for event in decoder.feed(data):
                    if isinstance(event, Oversize):
                        self._refuse("too-large", f"frame of {event.length} bytes announced", b"")
                    else:
                        try:
                            await self._on_frame(event.data)
                        except Exception:  # a bug here must not take the connection down silently
                            log.exception("connection %s (%s): frame handling failed", self.label, self.name)
                            self._refuse("overloaded", "internal error handling the frame", event.data)
                    if self._closing:
                        break
            if decoder.mid_frame:
                log.info("connection %s (%s) closed mid-frame; partial frame discarded", self.label, self.name)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.close(flush=self._closing)  # the server ended it: send what it said first

    async def _on_frame(self, data: bytes) -> None:
        if control.is_control(data):
            with contextlib.suppress(UnsafeXml, etree.XMLSyntaxError):
                request = control.read_control(self.pump.ctx.xml.parse(data))
                if request is not None:
                    self._on_control(request)
                    return
        if not self.authenticated:
            self._send(control.error("unauthorized", "the first frame must be a hello with the token"))
            self._closing = True
            return
        if self.name is None and not self._identify(data):
            return
        try:
            await self.pump.inject(data, session=self.session)
        except PumpClosed:
            self._refuse("shutdown", "server is shutting down", data)

    def _identify(self, data: bytes) -> bool:
        """Name an unnamed connection after the `<from>` of its first envelope."""
        try:
            root = self.pump.ctx.xml.parse(data)
        except (UnsafeXml, etree.XMLSyntaxError) as exc:
            code = exc.code if isinstance(exc, UnsafeXml) else "malformed"  # XMLSyntaxError.code is libxml2's int
            self._refuse(code, f"first frame unreadable: {exc}", data)
            return False
        sender = None
        if root.tag == MESSAGE and len(root) and root[0].tag == META:
            sender = root[0].findtext(FROM)
        if not sender:
            self._refuse("invalid-envelope", "first frame has no <from>", data)
            return False
        return self._take_name(sender, data)

    def _take_name(self, name: str, data: bytes = b"") -> bool:
        problem = self.server.name_problem(name)
        if problem is not None:
            self._refuse("forbidden-sender", f"connection may not be named {name!r}: {problem}", data)
            return False
        self.session = self.pump.attach(name, self._mailbox)
        self.name = name
        log.info("connection %s is %r", self.label, name)
        return True

    def _on_control(self, request: control.ControlRequest) -> None:
        verb = request.verb
        if verb == "hello":
            token = self.server.token
            if self.needs_token and not (token and hmac.compare_digest(request.attrs.get("token", ""), token)):
                log.warning("connection %s refused: wrong token", self.label)
                self._send(control.error("unauthorized", "wrong or missing token"))
                self._closing = True
                return
            self.authenticated = True
            name = request.attrs.get("name", "")
            if self.name is not None:
                self._send(control.error("already-named", f"this connection is {self.name!r}"))
            elif self._take_name(name):
                self._send(control.welcome(name, self.pump.config.limits.max_message_bytes))
            else:
                self._send(control.error("forbidden-sender", f"the name {name!r} is not available"))
            return
        if not self.authenticated:
            self._send(control.error("unauthorized", "the first frame must be a hello with the token"))
            self._closing = True
            return
        if verb == "status":
            self._send(control.result("status", self.server.status()))
        elif verb == "deadletters":
            limit = request.attrs.get("limit", "")
            records = self.pump.dead_letters.recent(int(limit) if limit.isdigit() else None)
            self._send(control.result("deadletters", [record.as_dict() for record in records]))
        else:
            self._send(control.error("unknown-verb", f"unknown control verb {verb!r}"))

    # -- writing ---------------------------------------------------------------
    def _mailbox(self, outbound: Outbound) -> bool:
        """Called by the pump: queue a frame for this client, never wait."""
        return self._send(outbound.envelope)

    def _send(self, data: bytes) -> bool:
        if self._closing and self._writer_task is None:
            return False
        try:
            self.outbox.put_nowait(data)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            self.server.frames_dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("client %s is not reading: %d frames dropped so far", self.name or self.label, self.dropped)
            return False

    def _refuse(self, code: str, reason: str, data: bytes) -> None:
        """A frame the server refuses before the pump sees it: `<huh>`, log, dead letter."""
        log.warning("refused code=%s connection=%s name=%s reason=%s", code, self.label, self.name, reason)
        self.server.frames_refused += 1
        self.pump.dead_letters.record(time=time.time(), code=code, reason=reason, step="server",
                                      sender=self.name or self.label, thread="", raw=data)
        self._send(build_huh(to=self.name or "client", thread=None, code=code, message=canned(code)))

    async def _write_loop(self) -> None:
        while True:
            data = await self.outbox.get()
            self.writer.write(encode_frame(data))
            await self.writer.drain()
            self.outbox.task_done()

    async def flush(self, timeout: float) -> None:
        """Give the writer `timeout` seconds to send what is queued."""
        writer_task = self._writer_task
        if writer_task is None or writer_task.done():
            return
        joined = asyncio.ensure_future(self.outbox.join())
        await asyncio.wait({joined, writer_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        joined.cancel()

    async def close(self, *, flush: bool) -> None:
        if self.session is not None:
            self.pump.detach(self.session)
            self.session = None
            self.name = None
        self._closing = True
        if flush:
            await self.flush(1.0)
        if self._writer_task is not None:
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self._writer_task
            self._writer_task = None
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.close()


class Server:
    def __init__(self, pump: StreamPump, *, socket_path: str | os.PathLike[str], tcp: str | None = None, token: str | None = None) -> None:
        self.pump = pump
        self.socket_path = Path(socket_path)
        self.tcp = tcp
        self.token = token
        self.outbox_size = pump.config.limits.client_outbox
        self.frames_dropped = 0
        self.frames_refused = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._handlers: set[asyncio.Task] = set()  # one per connection; owned here
        self._connections: set[Connection] = set()
        self._socket_inode: int | None = None

    def name_problem(self, name: str) -> str | None:
        if not name:
            return "empty name"
        if not NAME_PATTERN.match(name):
            return "not a valid name (letters, digits, _ . -; starting with a letter or _)"
        if is_reserved(name):
            return "reserved name"
        if name in self.pump.routes.by_name:
            return "that is a listener"
        if any(connection.name == name for connection in self._connections):
            return "another connection has it"
        return None

    async def start(self) -> list[str]:
        """Listen; returns where (for the log line). Raises ServerError."""
        if self.tcp and not self.token:
            raise ServerError("tcp is configured but AGENTSERVER_TOKEN is not set (put it in the environment or .env)")
        prepare_socket_path(self.socket_path)
        unix = await asyncio.start_unix_server(self._on_unix, sock=bind_private_unix_socket(self.socket_path))
        self._socket_inode = self.socket_path.stat().st_ino
        self._servers.append(unix)
        where = [f"unix:{self.socket_path}"]
        if self.tcp:
            host, _, port = self.tcp.rpartition(":")
            host = host.strip("[]")
            try:
                tcp = await asyncio.start_server(self._on_tcp, host=host, port=int(port))
            except OSError as exc:
                await self._close_listeners()
                raise ServerError(f"cannot listen on tcp {self.tcp}: {exc.strerror or exc}") from None
            self._servers.append(tcp)
            where.append(f"tcp:{self.tcp}")
        return where

    async def _on_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, needs_token=False)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, needs_token=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, needs_token: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        connection = Connection(self, reader, writer, needs_token=needs_token)
        self._connections.add(connection)
        try:
            await connection.run()
        except asyncio.CancelledError:
            pass  # stop() cancelled a connection that did not end on EOF: nothing to report
        finally:
            self._connections.discard(connection)
            self._handlers.discard(task)

    def status(self) -> dict:
        status = self.pump.status()
        status["server"] = {
            "connections": len(self._connections),
            "frames_dropped": self.frames_dropped,
            "frames_refused": self.frames_refused,
            "socket": str(self.socket_path),
            "tcp": self.tcp,
        }
        return status

    async def _close_listeners(self) -> None:
        for listener in self._servers:
            listener.close()
        for listener in self._servers:
            with contextlib.suppress(Exception):
                await listener.wait_closed()
        self._servers.clear()

    async def stop(self, timeout: float | None = None) -> ShutdownReport:
        """Stop accepting, drain the pump within `timeout`, flush replies, close, clean up."""
        for listener in self._servers:
            listener.close()  # no new connections
        report = await self.pump.shutdown(timeout)
        connections = list(self._connections)
        await asyncio.gather(*(connection.flush(1.0) for connection in connections))
        for connection in connections:
            await connection.close(flush=False)  # its reader sees EOF and its handler returns
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=2.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        await self._close_listeners()
        self._remove_socket()
        return report

    def _remove_socket(self) -> None:
        try:
            if self._socket_inode is not None and self.socket_path.stat().st_ino == self._socket_inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
