"""The socket server: other processes talk to the organism over a local socket.

`Server` owns a pump's listening sockets (Unix, and TCP when configured), its
connections and their tasks: `async with Server(pump, socket_path=...)`, or `start()`
and `stop()`. Each connection is a `Connection`, which moves bytes between its socket
and its protocol machine (`protocol.ServerConnection`: hello, token, naming, control
requests, refusals and deadlines are all decided there), and between the machine and
the pump. The life of a connection is `Connection.live`, one task, owned by the server.

Bounds (DESIGN.md §10), each a `limits:` key:
- `max_connections`: one connection more is told `too-many-connections` and closed;
- per connection, `max_connection_buffer_bytes`: a socket is only read as far as its
  machine has room (4 KiB before a TCP connection has authenticated), into one scratch
  buffer the server shares;
- all connections together, `max_buffered_bytes`: past it, connections holding 64 KiB
  or more (part of a large frame) wait in a queue, unread, so the kernel's socket
  buffers hold the rest and the process stays small, except the first in the queue,
  which reads on until its frame is done (so the queue always moves); small frames
  keep flowing. The total exceeds the budget by at most 64 KiB a connection plus one
  connection's buffer;
- `hello_timeout_s`, `frame_timeout_s`, `idle_timeout_s`: one watcher task for the server
  tells every machine the time, at its next deadline and at least once a second;
- `client_outbox`: a client that does not read its replies only fills its own queue;
  past `client_outbox` frames (or its buffer bound in bytes) further frames for it are
  dropped, counted and logged, and the pump and other clients never wait for it. Its
  control requests and refused frames are not answered (nor further frames taken)
  until it reads again;
- an unauthenticated TCP connection gets one refusal and is closed: nothing of it is
  recorded as a dead letter, and the log has a line for the first such refusal and
  every thousandth.

Replies follow sessions, not names: each named connection attaches a pump `Session`
and detaches it when it ends, so what was meant for it becomes a dead letter
(`undeliverable`) and never reaches a later connection with the same name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from agentserver.codes import ErrorCode
from agentserver.limits import is_reserved
from agentserver.message_bus.events import HopEvent
from agentserver.message_bus.mailboxes import Session
from agentserver.message_bus.stream_pump import PumpClosed, ShutdownReport, StreamPump
from agentserver.framing import encode_frame
from agentserver.outbound import Outbound, OutboundKind
from agentserver.protocol import (
    NEED_DATA, CancelRequest, Closed, ControlRequest, DeadLettersRequest, Envelope, Event, Hello, Named, Refusal,
    ServerConnection, ServerSettings, State, StatusRequest, WatchRequest,
)

__all__ = ["Server", "ServerError", "Connection", "prepare_socket_path", "bind_private_unix_socket"]

log = logging.getLogger("agentserver.server")

READ_CHUNK = 64 * 1024  # the most read from one socket at a time
SMALL_HOLD = 64 * 1024  # past the budget, a connection is still read while it holds less than this
CLOSE_GRACE_S = 2.0  # a closing connection's last frames get this long to leave before the socket is cut
TICK_S = 1.0  # the deadline watcher looks at least this often
UNAUTHENTICATED_LOG_EVERY = 1000  # refusals of unauthenticated connections: one log line per this many


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


class Connection(asyncio.BufferedProtocol):
    """One client connection. asyncio calls the protocol methods (bytes in, writability,
    loss); `live` is its task; `_mailbox` is where the pump puts what the client should get."""

    def __init__(self, server: "Server", *, token: bytes | None) -> None:
        self.server = server
        self.pump = server.pump
        self.label = "unix" if token is None else "tcp"
        self.machine = ServerConnection(server.settings, token=token, name_problem=server.name_problem,
                                        xml=self.pump.ctx.xml, now=_now())
        self.session: Session | None = None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0  # replies dropped because the client does not read
        self._wake = asyncio.Event()  # bytes, their end, a deadline or writability: the task has something to look at
        self._reading = True
        self._writable = True
        self._lost = asyncio.Event()
        self._eof = False  # the peer's input ended
        self._closing = False  # the last frames are out: what the peer still sends is read and dropped
        self._held: deque[bytes] = deque()  # frames for the client while its socket takes no more
        self._held_bytes = 0
        self._counted = 0  # this connection's bytes in the server's total
        self._unwatch: list[Callable[[], None]] = []  # its `watch` subscriptions to the pump's hop events
        self.hops_dropped = 0  # hop events a watching client did not read in time

    # ------------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.label = f"tcp:{peer[0]}:{peer[1]}"
        self.server.admit(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._closing:
            return self.server.scratch  # read to be dropped (see _close)
        room = self.machine.read_room
        if self.server.over_budget and self.server.finisher is not self:
            room = min(room, SMALL_HOLD - self.machine.buffered)
        return self.server.scratch[: max(1, min(room, READ_CHUNK))]

    def buffer_updated(self, nbytes: int) -> None:
        if self._closing:
            return  # dropped (see _close)
        self.machine.receive_data(bytes(self.server.scratch[:nbytes]), _now())
        self._account()
        self._wake.set()

    def eof_received(self) -> bool:
        self._eof = True
        if self._closing:
            return False  # both sides are done: the transport closes
        self.machine.receive_data(b"", _now())
        self._wake.set()
        return True  # keep the socket open for writing: `live` closes it once it has answered

    def connection_lost(self, exc: Exception | None) -> None:
        self.machine.receive_data(b"", _now())
        self._lost.set()
        self._writable = True  # nothing will be written any more: nobody waits for it
        self._wake.set()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        while self._held and self._writable:  # writing may pause it again
            data = self._held.popleft()
            self._held_bytes -= len(data)
            self._write_now(data)
        self._wake.set()

    # ------------------------------------------------------------------ the life of a connection
    async def live(self) -> None:
        """Take the machine's events in order until the connection is over: a hello or a
        first envelope attaches a pump session; an envelope goes to `pump.inject` (which
        waits while the intake is full: meanwhile the socket is read only until its buffer
        is full); a control request is answered; a refusal is sent, logged, counted and,
        when it closes, ends the connection. Then the session is detached and the socket
        closed after its last frames."""
        machine = self.machine
        try:
            while True:
                event = machine.next_event()
                self._account()
                if event is NEED_DATA:
                    self._wake.clear()
                    await self._wake.wait()
                elif isinstance(event, Closed):
                    if event.mid_frame:
                        log.info("connection %s (%s) closed mid-frame; partial frame discarded", self.label, machine.name)
                    return
                else:
                    await self._on(event)
        except Exception:  # a bug of ours: logged with its traceback, the client told `internal`, the connection ended
            log.exception("connection %s (%s) failed", self.label, machine.name)
            self.server.internal_errors += 1
            self._refused(machine.refuse_connection(ErrorCode.INTERNAL, "the server failed on this connection"))
        finally:
            await self._close()

    async def _on(self, event: Event) -> None:
        if isinstance(event, Hello):
            self._attach(event.name)
            self._write(event.frame)
        elif isinstance(event, Named):
            self._attach(event.name)
        elif isinstance(event, Envelope):
            await self._inject(event)
        elif isinstance(event, ControlRequest):
            await self._until_writable()
            self._write(self.machine.answer(event, self._answer(event)))
        elif isinstance(event, Refusal):
            if not event.close:
                await self._until_writable()
            self._refused(event)
        else:
            raise TypeError(f"unexpected event {event!r}")

    def _attach(self, name: str) -> None:
        self.session = self.pump.mailboxes.attach(name, self._mailbox)
        log.info("connection %s is %r", self.label, name)

    async def _inject(self, envelope: Envelope) -> None:
        try:
            await self.pump.inject(envelope.data, session=self.session, seq=envelope.seq)
        except PumpClosed:
            self._refused(self.machine.refuse_envelope(ErrorCode.SHUTDOWN, "the server is shutting down", envelope.data,
                                                       envelope.seq))

    def _answer(self, request: ControlRequest) -> object:
        if isinstance(request, StatusRequest):
            return self.server.status()
        if isinstance(request, DeadLettersRequest):
            return self._dead_letters(request.limit)
        if isinstance(request, CancelRequest):
            # the owner (a Unix connection) may cancel any conversation, as `agentserver cancel` does from
            # a connection of its own; a TCP connection only those it started
            return {"cancelled": self.session is not None and self.pump.guard.cancel(
                self.session, request.thread, owner=self.machine.trusted)}
        if isinstance(request, WatchRequest):
            self._unwatch.append(self.pump.events.subscribe(functools.partial(self._hop, request)))
            return {"watching": True, "own_conversations_only": not self.machine.trusted}
        raise TypeError(f"no answer for {request!r}")

    def _hop(self, request: WatchRequest, hop: HopEvent) -> None:
        """A hop event for a watching client (a TCP one: only of conversations it started);
        dropped and counted, never queued without bound, when the client does not read."""
        if not self.machine.trusted and (self.session is None or self.pump.stores.threads.find(
                self.session, self.session.name, hop.conversation) is None):
            return
        if self._lost.is_set() or self.transport is None or self.transport.is_closing():
            return
        if not self._offer(self.machine.hop(request, hop.as_dict())):
            self.hops_dropped += 1

    def _dead_letters(self, limit: int | None) -> list[dict[str, Any]]:
        """The owner (a Unix connection) sees every dead letter; a TCP connection its own."""
        records = self.pump.dead_letters.recent()
        if not self.machine.trusted:
            records = [record for record in records if record.sender == self.machine.name]
        if limit is not None:
            records = records[-limit:]
        return [record.as_dict() for record in records]

    def _refused(self, refusal: Refusal) -> None:
        """Send a refusal (if it says anything), and log, count and record it."""
        machine = self.machine
        if refusal.frame:
            self.server.frames_refused += 1
            if not machine.authenticated:
                self.server.unauthenticated_refusal(self.label, refusal)
            else:
                level = logging.INFO if refusal.close else logging.WARNING
                log.log(level, "refused code=%s connection=%s name=%s reason=%s", refusal.code, self.label,
                        machine.name, refusal.reason)
                if refusal.raw is not None:
                    self.pump.dead_letters.record(time=time.time(), code=refusal.code, reason=refusal.reason,
                                                  step="server", sender=machine.name or self.label, thread="",
                                                  raw=refusal.raw)
            # a refused envelope's <huh> goes out in envelope order, with the pump's acks and <huh>s
            self._write(refusal.frame if refusal.seq is None else machine.settle(refusal.seq, refusal.frame))

    async def refuse(self, refusal: Refusal) -> None:
        """The whole life of a connection refused at once: the refusal, then the close."""
        self._write(refusal.frame)
        await self._close()

    def end(self, code: ErrorCode, reason: str) -> None:
        """Close this connection from outside (the server is stopping): tell the client why.
        Not logged per connection (the server logs once)."""
        self._write(self.machine.refuse_connection(code, reason).frame)
        self._wake.set()

    def wake(self) -> None:
        """Something changed that the task should look at (a deadline passed)."""
        self._wake.set()

    # ------------------------------------------------------------------ reading: bounds
    def _account(self) -> None:
        """Report a change of this connection's buffered bytes to the server, and read only
        within bounds."""
        buffered = self.machine.buffered
        if buffered != self._counted:
            delta, self._counted = buffered - self._counted, buffered
            self.server.buffered_changed(delta)
            self.update_reading()

    def update_reading(self) -> None:
        """Read while the machine has room. Past the server's budget, a connection holding
        SMALL_HOLD or more (part of a large frame) waits in the budget queue, its bytes in
        the kernel, except the first in the queue, which reads on so that its frame can
        finish (the queue always moves: the first finishes its frame or is cut at the frame
        deadline). Small frames keep flowing."""
        machine, transport, server = self.machine, self.transport, self.server
        room = machine.read_room > 0
        waiting = room and server.over_budget and machine.buffered >= SMALL_HOLD
        if waiting:
            server.budget_queue.setdefault(self, None)
        else:
            server.leave_budget_queue(self)
        reading = self._closing or (room and (not waiting or server.finisher is self))
        if reading == self._reading or transport is None:
            return
        self._reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # ------------------------------------------------------------------ writing
    def _mailbox(self, outbound: Outbound) -> bool:
        """Called by the pump: take a frame for this client now, never wait. False: it is
        gone, or has not read what it was sent (the frame is dropped and counted)."""
        if self._lost.is_set() or self.transport is None or self.transport.is_closing():
            return False
        machine = self.machine
        if outbound.seq is None:
            data = machine.send_envelope(outbound.envelope)
        else:  # an envelope's one ack or <huh>: in the order the envelopes came
            frame = machine.ack(outbound.seq, outbound.thread_id, outbound.message) if outbound.kind is OutboundKind.ACK \
                else encode_frame(outbound.envelope)
            data = machine.settle(outbound.seq, frame)
            if not data:
                return True
        if self._offer(data):
            return True
        self._drop()
        return False

    def _offer(self, data: bytes) -> bool:
        """Send now, or hold while the socket takes no more; False (not sent) once the
        client's outbox is full."""
        if self._writable and not self._held:
            self._write_now(data)
            return True
        limits = self.pump.config.limits
        if self._held and (len(self._held) >= limits.client_outbox
                           or self._held_bytes + len(data) > limits.max_connection_buffer_bytes):
            return False
        self._held.append(data)
        self._held_bytes += len(data)
        return True

    def _drop(self) -> None:
        self.dropped += 1
        self.server.frames_dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("client %s is not reading: %d frames dropped so far", self.machine.name or self.label,
                        self.dropped)

    def _write(self, data: bytes) -> None:
        """Send a frame that is never dropped (in order after what is held)."""
        if self._held:
            self._held.append(data)
            self._held_bytes += len(data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and not self._closing:
            transport.write(data)

    async def _until_writable(self) -> None:
        """Wait until the client takes output again (or the connection is over)."""
        while not self._writable and self.machine.state not in (State.CLOSING, State.CLOSED):
            self._wake.clear()
            await self._wake.wait()

    async def _close(self) -> None:
        """Detach the session, send what is held and close, lingering: the write side is shut
        first and what the peer still sends is read and dropped until it closes too (closing
        with input unread would make the kernel reset the connection, and the peer could lose
        the last frames, a refusal saying why). A peer that neither reads nor closes is cut
        after CLOSE_GRACE_S."""
        for unwatch in self._unwatch:
            unwatch()
        self._unwatch.clear()
        if self.session is not None:
            self.pump.mailboxes.detach(self.session)
            self.session = None
        self.server.forget(self)
        if self._counted:
            counted, self._counted = self._counted, 0
            self.server.buffered_changed(-counted)
        transport = self.transport
        if transport is None:
            return
        while self._held:
            self._write_now(self._held.popleft())
        self._held_bytes = 0
        if self._eof or not transport.can_write_eof():
            transport.close()
        else:
            self._closing = True
            transport.write_eof()
            self.update_reading()
        try:
            await asyncio.wait_for(self._lost.wait(), CLOSE_GRACE_S)
        except TimeoutError:
            log.debug("connection %s (%s) not closed by its peer within %ss of the server's close; cut",
                      self.label, self.machine.name, CLOSE_GRACE_S)
            transport.abort()


class Server:
    """The listening sockets of one pump, and every connection to them."""

    def __init__(self, pump: StreamPump, *, socket_path: str | os.PathLike[str], tcp: str | None = None,
                 token: str | None = None) -> None:
        self.pump = pump
        self.socket_path = Path(socket_path)
        self.tcp = tcp
        self.token = token
        limits = pump.config.limits
        self.settings = ServerSettings.from_limits(limits)
        self.max_connections = limits.max_connections
        self.max_buffered_bytes = limits.max_buffered_bytes
        self.scratch = memoryview(bytearray(READ_CHUNK))  # every socket is read into this, then copied out
        self.buffered = 0  # bytes held by all connections' machines
        self.budget_queue: dict[Connection, None] = {}  # past the budget: who waits to be read, in order
        self.frames_dropped = 0
        self.frames_refused = 0
        self.connections_refused = 0  # over max_connections
        self.unauthenticated_refused = 0
        self.internal_errors = 0
        self._connections: set[Connection] = set()
        self._refusing: set[asyncio.Task[None]] = set()  # connections refused at once, closing
        self._listeners: list[asyncio.AbstractServer] = []
        self._watcher: asyncio.Task[None] | None = None
        self._socket_inode: int | None = None
        self._stopping = False

    async def __aenter__(self) -> "Server":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ start and stop
    async def start(self) -> list[str]:
        """Listen; returns where (for the log line). Raises ServerError."""
        if self.tcp and not self.token:
            raise ServerError("tcp is configured but AGENTSERVER_TOKEN is not set (put it in the environment or .env)")
        loop = asyncio.get_running_loop()
        prepare_socket_path(self.socket_path)
        unix = await loop.create_unix_server(lambda: Connection(self, token=None),
                                             sock=bind_private_unix_socket(self.socket_path))
        self._socket_inode = self.socket_path.stat().st_ino
        self._listeners.append(unix)
        where = [f"unix:{self.socket_path}"]
        if self.tcp:
            assert self.token is not None
            token = self.token.encode("utf-8")
            host, _, port = self.tcp.rpartition(":")
            try:
                tcp = await loop.create_server(lambda: Connection(self, token=token), host=host.strip("[]"),
                                               port=int(port))
            except OSError as exc:
                await self._close_listeners()
                self._remove_socket()
                raise ServerError(f"cannot listen on tcp {self.tcp}: {exc.strerror or exc}") from None
            self._listeners.append(tcp)
            where.append(f"tcp:{self.tcp}")
        self._watcher = asyncio.create_task(self._watch_deadlines(), name="server:deadlines")
        return where

    async def stop(self, timeout: float | None = None) -> ShutdownReport:
        """Stop accepting, drain the pump within `timeout`, send what it said, close every
        connection (each is told `shutdown`), end every task, remove the socket."""
        self._stopping = True
        for listener in self._listeners:
            listener.close()  # no new connections
        report = await self.pump.shutdown(timeout)
        connections = list(self._connections)
        if connections:
            log.info("closing %d connections", len(connections))
        for connection in connections:
            connection.end(ErrorCode.SHUTDOWN, "the server is stopping")
        tasks = [connection.task for connection in connections if connection.task is not None]
        tasks += self._refusing
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S + 1.0)
            for task in stuck:
                log.warning("connection task %s did not end; cancelled", task.get_name())
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait([self._watcher])
            self._watcher = None
        await self._close_listeners()
        self._remove_socket()
        return report

    async def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    def _remove_socket(self) -> None:
        try:
            if self._socket_inode is not None and self.socket_path.stat().st_ino == self._socket_inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ connections
    def admit(self, connection: Connection) -> None:
        """A socket was accepted: start its task, or refuse it (too many, or stopping): one
        refusal, then a lingering close. Refusals still lingering are bounded too: past
        `max_connections` of them, a socket is cut without a word."""
        if not self._stopping and len(self._connections) < self.max_connections:
            self._connections.add(connection)
            connection.task = asyncio.create_task(connection.live(), name=f"connection:{connection.label}")
            connection.task.add_done_callback(_report_failure)
            return
        self.connections_refused += 1
        if self.connections_refused == 1 or self.connections_refused % UNAUTHENTICATED_LOG_EVERY == 0:
            log.warning("refused a connection (%s): %d connections open, the limit is %d; %d refused so far",
                        connection.label, len(self._connections), self.max_connections, self.connections_refused)
        transport = connection.transport
        assert transport is not None
        if len(self._refusing) >= self.max_connections:
            transport.abort()
            return
        refusal = connection.machine.refuse_connection(
            ErrorCode.SHUTDOWN if self._stopping else ErrorCode.TOO_MANY_CONNECTIONS,
            f"{len(self._connections)} connections open, the limit is {self.max_connections}")
        task = asyncio.create_task(connection.refuse(refusal), name=f"refusing:{connection.label}")
        connection.task = task
        self._refusing.add(task)
        task.add_done_callback(self._refusing.discard)
        task.add_done_callback(_report_failure)

    def forget(self, connection: Connection) -> None:
        """The connection is over: it is no longer counted or read."""
        self._connections.discard(connection)
        self.leave_budget_queue(connection)

    def name_problem(self, name: str) -> str | None:
        """Why a connection may not take `name` (None: it may)."""
        if is_reserved(name):
            return "reserved name"
        if name in self.pump.routes.by_name:
            return "that is a listener"
        if self.pump.mailboxes.named(name) is not None:
            return "another client has it"
        return None

    def unauthenticated_refusal(self, label: str, refusal: Refusal) -> None:
        """Count a refusal of an unauthenticated connection; log the first and every thousandth."""
        self.unauthenticated_refused += 1
        count = self.unauthenticated_refused
        if count == 1 or count % UNAUTHENTICATED_LOG_EVERY == 0:
            log.warning("refused unauthenticated connection %s: %s (%s); %d refused so far", label, refusal.code,
                        refusal.reason, count)
        else:
            log.debug("refused unauthenticated connection %s: %s (%s)", label, refusal.code, refusal.reason)

    # ------------------------------------------------------------------ the budget
    @property
    def over_budget(self) -> bool:
        return self.buffered > self.max_buffered_bytes

    @property
    def finisher(self) -> Connection | None:
        """The connection first in the budget queue: it may read on past the budget."""
        return next(iter(self.budget_queue), None)

    def leave_budget_queue(self, connection: Connection) -> None:
        """`connection` waits no more; if it was first, the next one may read."""
        if connection not in self.budget_queue:
            return
        first = self.finisher is connection
        del self.budget_queue[connection]
        following = self.finisher
        if first and following is not None:
            following.update_reading()

    def buffered_changed(self, delta: int) -> None:
        """Keep the total; once it falls back within the budget, read every waiting connection again."""
        self.buffered += delta
        if delta < 0 and self.budget_queue and not self.over_budget:
            for connection in list(self.budget_queue):
                connection.update_reading()

    # ------------------------------------------------------------------ deadlines
    async def _watch_deadlines(self) -> None:
        """Tell every connection's machine the time: at the earliest deadline, and at least
        every TICK_S. A machine whose deadline passed has a closing refusal for its task."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            wake_at = now + TICK_S
            for connection in list(self._connections):
                machine = connection.machine
                if machine.time_passed(now):
                    connection.wake()
                deadline = machine.next_deadline()
                if deadline is not None:
                    wake_at = min(wake_at, deadline)
            await asyncio.sleep(max(wake_at - loop.time(), 0.01))

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        status = self.pump.status()
        status["server"] = {
            "connections": len(self._connections),
            "buffered_bytes": self.buffered,
            "connections_waiting_for_budget": len(self.budget_queue),
            "frames_dropped": self.frames_dropped,
            "frames_refused": self.frames_refused,
            "connections_refused": self.connections_refused,
            "unauthenticated_refused": self.unauthenticated_refused,
            "internal_errors": self.internal_errors,
            "socket": str(self.socket_path),
            "tcp": self.tcp,
        }
        return status


def _now() -> float:
    return asyncio.get_running_loop().time()


def _report_failure(task: asyncio.Task[None]) -> None:
    """A connection task ended with an exception it did not handle itself: a bug, logged."""
    if not task.cancelled() and (failure := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=failure)
