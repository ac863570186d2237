"""The socket client: talk to a running organism from another process.

    from agentserver.client import connect

    async with connect("run/agentserver.sock", name="me") as client:   # or: async with await connect(...)
        reply = await client.ask("<Greeting><Name>Ada</Name></Greeting>", to="greeter")
        print(reply.xml)
        thread_id = await client.send("<Greeting><Name>Bob</Name></Greeting>", to="greeter")
        await client.cancel(thread_id)      # ends that conversation; its caller hears SystemError `cancelled`
        async for frame in client:          # replies no ask was waiting for
            ...

`ask` returns a `Reply` (payload = the payload element, xml = its bytes) or raises
`HuhError` (the server refused the message), `RemoteError` (the conversation ended in
a SystemError) or `AskTimeout`. A refused hello or control request raises
`ControlError` (a ConnectionError) with the server's code. The CLI verbs `send`, `ask`,
`status` and `deadletters` use this client.

The connection protocol (hello, version, control requests matched to their answers by
id) is the client side of agentserver/protocol.py; this module moves bytes between the
socket and that machine. The client owns one task, its reader, started by `connect`
(or `start`) and ended by `close` (or leaving `async with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from typing import Any, AsyncIterator, Generator, Iterable

from lxml import etree

from agentserver.codes import canned
from agentserver.envelope import MESSAGE, huh_seq, payload_elements, read_huh, read_meta
from agentserver.outbound import HuhError, Outbound, OutboundKind
from agentserver.protocol import (
    CLIENT_MAX_FRAME, NEED_DATA, Ack, Answer, Hop, ClientConnection, ClientState, Closed, Envelope, Event, ProtocolError,
    Refusal, Welcome,
)
from agentserver.sender import ExternalSender
from agentserver.xmlsafe import SafeXml, UnsafeXml

__all__ = ["connect", "Client", "ControlError", "DEFAULT_SOCKET"]

log = logging.getLogger("agentserver.client")

DEFAULT_SOCKET = "run/agentserver.sock"
READ_CHUNK = 64 * 1024


class ControlError(ConnectionError):
    """The server refused a control request (hello, status, ...) or ended the connection."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def connect(
    socket_path: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    tcp: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    max_frame: int = CLIENT_MAX_FRAME,
    payloads: Iterable[type] = (),
    config: str | os.PathLike[str] | None = None,
) -> "Connecting":
    """Connect over the Unix socket (default $AGENTSERVER_SOCKET or run/agentserver.sock) or
    `tcp="HOST:PORT"`, and say hello within `timeout` seconds.

    The name defaults to a random `client-xxxxxxxx`; over TCP the token defaults to
    $AGENTSERVER_TOKEN. Use `async with connect(...) as client`, or `client = await
    connect(...)` and close it yourself (`async with await connect(...)` works too).

    Replies come back as objects, as in-process, for the @xmlify classes in `payloads`
    and, with `config` (an organism.yaml), its listeners' payload classes and its agents'
    reply classes; a reply of another class comes back as its lxml element.
    """
    return Connecting(socket_path, name=name, tcp=tcp, token=token, timeout=timeout, max_frame=max_frame,
                      payload_types=payload_types(payloads, config))


def payload_types(payloads: Iterable[type] = (), config: str | os.PathLike[str] | None = None) -> Any:
    """What reads replies as objects: the given classes, and those of an organism's config."""
    classes = list(payloads)
    if config is not None:
        from agentserver.config import load_config

        organism = load_config(config)
        for listener in organism.listeners:
            classes.append(listener.payload_class)
            reply_class = getattr(getattr(listener, "llm", None), "reply_class", None)
            if isinstance(reply_class, type):
                classes.append(reply_class)
    if not classes:
        return None
    from agentserver.message_bus.listeners import PayloadTypes

    types = PayloadTypes()
    for payload_class in classes:
        if types.for_class(payload_class) is None:
            raise TypeError(f"{payload_class!r} is not an @xmlify payload class")
    return types


class Connecting:
    """What `connect()` returns: await it for a started `Client`, or enter it with `async with`."""

    def __init__(self, socket_path: str | os.PathLike[str] | None, *, name: str | None, tcp: str | None,
                 token: str | None, timeout: float, max_frame: int, payload_types: Any = None) -> None:
        self._socket_path, self._name, self._tcp, self._token = socket_path, name, tcp, token
        self._timeout, self._max_frame, self._payload_types = timeout, max_frame, payload_types
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, "Client"]:
        return self._open().__await__()

    async def __aenter__(self) -> "Client":
        self._client = await self._open()
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()

    async def _open(self) -> "Client":
        token = self._token
        if self._tcp:
            host, _, port = self._tcp.rpartition(":")
            opening = asyncio.open_connection(host.strip("[]"), int(port))
            token = token if token is not None else os.environ.get("AGENTSERVER_TOKEN")
        else:
            path = str(self._socket_path or os.environ.get("AGENTSERVER_SOCKET") or DEFAULT_SOCKET)
            opening = asyncio.open_unix_connection(path)
        reader, writer = await asyncio.wait_for(opening, self._timeout)
        client = Client(reader, writer, self._name or f"client-{uuid.uuid4().hex[:8]}", token=token,
                        max_frame=self._max_frame, payload_types=self._payload_types)
        try:
            await client.start(self._timeout)
        except BaseException:  # not only errors: a cancelled connect must not leak the socket and task
            await client.close()
            raise
        return client


class Client(ExternalSender):
    """One connection to a server, named `name`. Start it (`await client.start()`, which
    `connect` does) before use; close it when done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str, *,
                 token: str | None = None, max_frame: int = CLIENT_MAX_FRAME, inbox_size: int = 10_000,
                 payload_types: Any = None) -> None:
        super().__init__(name, SafeXml(max_frame), inbox_size=inbox_size, payload_types=payload_types)
        self._reader = reader
        self._writer = writer
        self._machine = ClientConnection(name, xml=self._xml, token=token, max_frame=max_frame)
        self._answers: dict[str, asyncio.Future[Event]] = {}  # request id -> its answer (or refusal)
        self._read_task: asyncio.Task[None] | None = None
        self._is_closed = False
        self._ended: ConnectionError | None = None  # why the connection ended, once it has
        self.unreadable = 0  # frames from the server that could not be read (skipped)
        self._watches: dict[str, asyncio.Queue[dict | None]] = {}  # watch request id -> its hops
        self.hops_dropped = 0

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def conversation_timeout(self) -> float | None:
        """Seconds a conversation may last before the server ends it (from the welcome)."""
        return self._machine.conversation_timeout_s

    @property
    def max_frame(self) -> int | None:
        """The largest frame the server takes (from the welcome)."""
        return self._machine.server_max_frame

    # -- starting --------------------------------------------------------------------
    async def start(self, timeout: float = 10.0) -> None:
        """Start the reader and say hello; raises ControlError if the server refuses."""
        if self._read_task is not None:
            raise RuntimeError("this client is already started")
        self._read_task = asyncio.create_task(self._read_loop(), name=f"client-reader:{self.name}")
        request_id, frame = self._machine.hello()
        answer = await asyncio.wait_for(self._exchange(request_id, frame), timeout)
        if not isinstance(answer, Welcome):
            raise ConnectionError(f"unexpected answer to the hello: {answer!r}")

    # -- control requests ------------------------------------------------------------
    async def status(self) -> dict:
        """The server's counters, queues and open conversations."""
        data = await self._request("status")
        assert isinstance(data, dict)
        return data

    async def deadletters(self, limit: int | None = None) -> list[dict]:
        """The most recent dead letters, oldest first (over TCP: only this client's own)."""
        data = await self._request("deadletters", **({"limit": str(limit)} if limit else {}))
        assert isinstance(data, list)
        return data

    async def cancel(self, thread_id: str) -> bool:
        """Cancel the conversation this client started as `thread_id`: its handlers stop and
        its caller hears SystemError `cancelled`. False if no such conversation is open."""
        data = await self._request("cancel", thread=thread_id)
        assert isinstance(data, dict)
        return bool(data.get("cancelled"))

    async def watch(self, *, buffer: int = 10_000) -> AsyncIterator[dict]:
        """Every hop event from now on, as a dict (time, conversation, thread, sender, to,
        root_tag, bytes, outcome, duration_s, message_id, call_id, preview), until the
        connection ends; over TCP, only hops of this client's own conversations. What this
        side does not take in time is dropped (counted in `hops_dropped`)."""
        self._check_open()
        hops: asyncio.Queue[dict | None] = asyncio.Queue(buffer)
        request_id, frame = self._machine.request("watch")
        self._watches[request_id] = hops  # before the answer: hops may follow it at once
        try:
            await self._exchange(request_id, frame)
            while (hop := await hops.get()) is not None:
                yield hop
        finally:
            self._watches.pop(request_id, None)
        if self._ended is not None:
            raise self._ended

    async def _request(self, verb: str, **attrs: str) -> object:
        self._check_open()
        request_id, frame = self._machine.request(verb, **attrs)
        answer = await self._exchange(request_id, frame)
        assert isinstance(answer, Answer)
        return answer.data

    async def _exchange(self, request_id: str, frame: bytes) -> Event:
        """Send a request and wait for the answer carrying its id (a Refusal raises ControlError)."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = future
        try:
            await self._write(frame)
            answer = await future
        finally:
            self._answers.pop(request_id, None)
        if isinstance(answer, Refusal):
            raise ControlError(answer.code, answer.reason)
        return answer

    async def send_raw(self, frame: bytes) -> int:
        """Send the bytes of one envelope frame as they are (tests, tools); returns its
        number. Its ack or `<huh>` arrives through `receive`."""
        seq, data = self._machine.send_envelope(frame)
        await self._write(data)
        return seq

    # -- I/O ------------------------------------------------------------------------
    async def _transmit(self, raw: bytes, thread_id: str) -> asyncio.Future[Outbound] | None:
        # the server refuses an oversize frame from its header, before it can read the
        # thread id: say so here, on the right thread, as the in-process client would
        server_max = self._machine.server_max_frame
        if server_max is not None and len(raw) > server_max:
            raise HuhError("too-large", canned("too-large"), thread_id)
        self._check_open()
        seq, frame = self._machine.send_envelope(raw)
        confirmation = self._expect_confirmation(seq, thread_id) if self._machine.acks else None
        await self._write(frame)
        return confirmation

    def _check_open(self) -> None:
        if self._ended is not None:
            raise self._ended
        if self._is_closed or self._machine.state is not ClientState.OPEN:
            raise ConnectionError("client is closed")

    async def _write(self, data: bytes) -> None:
        if self._ended is not None:
            raise self._ended
        if self._is_closed:
            raise ConnectionError("client is closed")
        self._writer.write(data)
        await self._writer.drain()

    async def _read_loop(self) -> None:
        """Feed the machine what the socket gives, and hand its events out, until it closes."""
        error: ConnectionError = ConnectionError("connection closed by the server")
        try:
            while True:
                event = self._machine.next_event()
                if event is NEED_DATA:
                    self._machine.receive_data(await self._reader.read(READ_CHUNK))
                elif isinstance(event, Closed):
                    break
                else:
                    error = self._on(event) or error
        except (ConnectionError, OSError) as exc:
            error = ConnectionError(f"connection lost: {exc}")
        except asyncio.CancelledError:
            error = ConnectionError("client is closed")
            raise
        finally:
            self._is_closed = True
            self._ended = error
            self._writer.close()  # the server is done with us: let it close at once
            for future in self._answers.values():
                if not future.done():
                    future.set_exception(error)
            for hops in self._watches.values():  # a watch ends (and raises why) after what it holds
                if hops.full():
                    hops.get_nowait()  # the end must get in: one hop less
                    self.hops_dropped += 1
                hops.put_nowait(None)
            self._closed(error)

    def _on(self, event: Event) -> ConnectionError | None:
        """Hand out one event; returns the error the connection ends with, if this is it."""
        if isinstance(event, Envelope):
            self._on_envelope(event.data)
        elif isinstance(event, Ack):
            self._deliver(Outbound.ack(event.seq, event.thread, event.message_id))
        elif isinstance(event, Hop):
            hops = self._watches.get(event.request_id)
            if hops is not None and isinstance(event.data, dict):
                try:
                    hops.put_nowait(event.data)
                except asyncio.QueueFull:
                    self.hops_dropped += 1
        elif isinstance(event, (Welcome, Answer)):
            self._answered(event.request_id, event)
        elif isinstance(event, Refusal):
            if event.request_id is not None:
                self._answered(event.request_id, event)
            elif event.close:  # the server ends the connection: everything waiting hears why
                return ControlError(event.code, event.reason)
            else:  # (this server version never sends one)
                log.warning("client %s: the server said %s: %s", self.name, event.code, event.reason)
        elif isinstance(event, ProtocolError):
            return ConnectionError(f"the server broke the protocol: {event.reason}")
        return None

    def _answered(self, request_id: str, event: Event) -> None:
        future = self._answers.get(request_id)
        if future is not None and not future.done():
            future.set_result(event)

    def _on_envelope(self, data: bytes) -> None:
        try:
            root = self._xml.parse(data)
        except (UnsafeXml, etree.XMLSyntaxError):
            self.unreadable += 1
            return
        if root.tag == MESSAGE:
            self._deliver(_outbound(root, data, self._payload_types))
        else:
            self.unreadable += 1

    async def close(self) -> None:
        """End the reader task and close the socket."""
        self._is_closed = True
        task = self._read_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.close()
            await self._writer.wait_closed()
        if task is not None and not task.cancelled():
            failure = task.exception()
            if failure is not None:  # a bug in the reader: never hidden
                raise failure


def _outbound(root: etree._Element, data: bytes, payload_types: Any = None) -> Outbound:
    """A frame from the server as the sender hands it out: a reply's payload as its object
    when `payload_types` knows the class, else as the element."""
    meta = read_meta(root)
    payloads = payload_elements(root)
    payload = payloads[0] if payloads else None
    if payload is not None:
        huh = read_huh(payload)
        if huh is not None:
            return Outbound(OutboundKind.HUH, meta.thread, meta.sender, data, code=huh[0], message=huh[1],
                            seq=huh_seq(payload))
    xml = etree.tostring(payload, method="c14n", exclusive=True) if payload is not None else b""
    value: Any = payload
    payload_type = payload_types.get(payload.tag) if payload_types is not None and payload is not None else None
    if payload_type is not None and payload is not None:
        try:
            value = payload_type.from_element(payload)
        except Exception as exc:  # a class that does not fit what came: the element, and say why
            log.warning("a <%s> reply does not read as %s: %s", payload.tag, payload_type.cls.__name__, exc)
    return Outbound(OutboundKind.REPLY, meta.thread, meta.sender, data, value, xml)
