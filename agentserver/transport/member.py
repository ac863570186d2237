"""A member of an organism on NATS JetStream (DESIGN.md §15).

Every `run` process started with the same config and `transport` is a member. Each
runs its own pump for the conversations of its own clients (their pipeline, threads,
history and awaited calls stay there: the *owner*), and shares the handler work of
the whole organism through JetStream:

    owner pump ──_handle──► invoke() ──publish Work──► stream WORK, subject per listener
                                                              │ durable consumer per listener,
                                                              │ MaxAckPending = the listener's cap
    owner inbox ◄──Result / Ask── worker (any member) ◄──fetch┘ (organism-wide)
          └──────────Answer──────► worker inbox

- A unit is published with its id as `Nats-Msg-Id` (JetStream drops a republished
  copy) and the client's ack follows the publish ack.
- The worker runs the handler under its deadline, tells JetStream it is alive
  (in-progress acks) while it runs, publishes the result to the owner's inbox, and
  only then acks the unit: a worker killed mid-unit leaves it to be redelivered to
  another member after `ACK_WAIT_S`, flagged `meta.redelivered`.
- `meta.ask` in a handler running on a worker asks the owner, which makes the call on
  the conversation it holds and sends back the answer (or the PeerError).
- Members heart-beat into a key-value bucket (with a TTL); the organism's config
  fingerprint is kept there too, and a member whose config differs is refused.
- The owner's journal is in JetStream (transport/journal.py): when a member's heartbeat
  lapses, another claims its `journal.<member>` key and adopts the conversations it left
  open, running again what was not done (redelivered).

The member owns its NATS connection and every task it starts (`async with member:`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

from lxml import etree

from agentserver.codes import ErrorCode
from agentserver.journal import fold
from agentserver.message_bus.calls import PeerError
from agentserver.message_bus.durability import Journaled
from agentserver.message_bus.handler_call import HandlerFailed, ask_model, llm_code
from agentserver.message_bus.message_state import Delivery, HandlerMetadata, MessageState
from agentserver.transport.journal import SharedJournal
from agentserver.transport.wire import (
    Answer,
    Ask,
    Names,
    Result,
    WireError,
    Work,
    decode,
    decode_history,
    decode_items,
    decode_ops,
    encode,
    encode_history,
    encode_items,
    fingerprint,
)

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.config import OrganismConfig
    from agentserver.message_bus.calls import Calls
    from agentserver.message_bus.listeners import Listener
    from agentserver.message_bus.pipeline_context import PipelineContext
    from agentserver.message_bus.stores import Stores
    from agentserver.message_bus.stream_pump import StreamPump

__all__ = ["Member", "TransportError", "Transported"]

log = logging.getLogger("agentserver.transport")

ACK_WAIT_S = 5.0  # a unit whose worker went silent this long goes to another member
PROGRESS_S = 1.5  # a running handler's worker tells JetStream it is alive this often
MEMBER_TTL_S = 10.0  # a member that stopped heart-beating this long ago is gone
HEARTBEAT_S = 2.0  # also how often the organism-wide view in `status` is refreshed
CONNECT_TIMEOUT_S = 5.0  # a member that cannot reach NATS at start fails after this long
PUBLISH_TIMEOUT_S = 2.0  # one try; a publish is retried (same message id) until NATS takes it
INBOX_MAX_AGE_S = 3600.0  # what waits in the inbox of a member that died goes after this long
FETCH_WAIT_S = 1.0


class TransportError(Exception):
    """The member cannot join its organism (NATS unreachable, another configuration)."""


class Transported(Journaled):
    """The pump's durability in NATS mode. The owner's journal is in JetStream
    (SharedJournal: another member adopts its open conversations if it goes), and an
    external envelope's ack waits until its unit is both written there and published as
    work (or ended without getting there)."""

    def __init__(self, journal: SharedJournal, ctx: "PipelineContext", stores: "Stores", calls: "Calls") -> None:
        super().__init__(journal, ctx, stores, calls)
        self._waiting: dict[int, Callable[[], object]] = {}

    def when_durable(self, state: MessageState, then: Callable[[], object]) -> None:
        route = state.route
        if isinstance(route, Delivery) and state.error is None and not route.listener.system and not state.settled:
            left = [2]

            def one() -> None:
                left[0] -= 1
                if left[0] == 0:
                    then()

            self._waiting[id(state)] = one  # called once its unit is published (invoke) or has ended
            super().when_durable(state, one)
        else:
            super().when_durable(state, then)

    def published(self, state: MessageState) -> None:
        then = self._waiting.pop(id(state), None)
        if then is not None:
            then()

    def ended(self, state: MessageState) -> None:
        self.published(state)
        super().ended(state)

    async def settled(self, state: MessageState | None = None) -> None:
        """Handlers run on any member: the owner's slot bounds no redo, so it is not held
        until the unit's end is kept (only `settled()`, everything written, is waited for)."""
        if state is None:
            await super().settled()


@dataclass
class _Slot:
    """A work unit's hold on one of this member's handler slots."""

    held: bool = True
    asking: int = 0


@dataclass
class _Invocation:
    """A handler call this member (its owner) waits on."""

    meta: HandlerMetadata
    future: "asyncio.Future[Result]"
    asks: set["asyncio.Task[None]"] = field(default_factory=set)


class Member:
    def __init__(self, config: "OrganismConfig", url: str, nc: Any) -> None:
        self.config = config
        self.url = url
        self.id = uuid.uuid4().hex[:12]
        self.names = Names(config.name)
        self.fingerprint = fingerprint(config)
        self.nc = nc
        self.js = nc.jetstream()
        self.journal = SharedJournal(self)
        self._durability: Transported | None = None
        self.connected = True
        self.executed = 0  # handler calls this member ran for the organism
        self.started = time.time()
        self.socket = config.socket  # where its own clients connect (`run --socket`), shown in `status`
        self.pump: "StreamPump | None" = None
        self._kv: Any = None
        self._members: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._slots = asyncio.Semaphore(config.max_concurrent_handlers)
        self._running: dict["asyncio.Task[None]", Any] = {}  # work units being handled here -> their JetStream message
        self._invocations: dict[str, _Invocation] = {}
        self._asks: dict[str, "asyncio.Future[Answer]"] = {}
        self._units = itertools.count(1)
        self._draining = False
        self._closed = False
        self._inbox: Any = None
        self._takers: list[asyncio.Task[None]] = []
        self._cap_by_listener: dict[str, int] | None = None
        self._heart: asyncio.Task[None] | None = None
        self._view: dict[str, Any] = {"members": [], "listeners": {}}
        self._adopting: set[str] = set()  # gone members whose open conversations this one is taking over
        self.adopted = 0  # conversations adopted so far

    # -- joining --------------------------------------------------------------------------
    @classmethod
    async def join(cls, config: "OrganismConfig", url: str) -> "Member":
        """Connect to NATS at `url`, set up the organism's streams, consumers and buckets
        (idempotently), and check this config against the organism's. Raises TransportError."""
        try:
            import nats
        except ImportError:
            raise TransportError("organism.transport needs nats-py: pip install 'agentserver[nats]'") from None

        member: Member | None = None

        async def on_error(exc: Exception) -> None:
            if member is not None and not member._closed:
                log.debug("nats: %s", exc)

        async def on_disconnect() -> None:
            if member is not None and not member._closed:
                member.connected = False
                log.warning("NATS at %s went away: units wait to be published and acked until it is back", url)

        async def on_reconnect() -> None:
            if member is not None:
                member.connected = True
                log.warning("NATS at %s is back", url)

        try:
            nc = await asyncio.wait_for(nats.connect(url, connect_timeout=2, error_cb=on_error, disconnected_cb=on_disconnect,
                                                     reconnected_cb=on_reconnect, max_reconnect_attempts=-1,
                                                     reconnect_time_wait=0.5, name=f"agentserver:{config.name}"),
                                        CONNECT_TIMEOUT_S)
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
            raise TransportError(f"cannot reach NATS at {url} within {CONNECT_TIMEOUT_S:g}s ({type(exc).__name__}); "
                                 "is nats-server running there, with JetStream on (-js)?") from None
        member = cls(config, url, nc)
        try:
            await member._set_up()
        except BaseException:
            member._closed = True
            await nc.close()
            raise
        return member

    async def _set_up(self) -> None:
        from nats.js.api import ConsumerConfig, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
        from nats.js.errors import KeyWrongLastSequenceError

        names, js = self.names, self.js
        try:
            await js.add_stream(StreamConfig(name=names.work_stream, subjects=[f"{names.prefix}.work.*"],
                                             retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                             duplicate_window=120))
        except Exception as exc:
            raise TransportError(f"NATS at {self.url} has no JetStream (start nats-server with -js): {exc}") from None
        await js.add_stream(StreamConfig(name=names.inbox_stream, subjects=[f"{names.prefix}.inbox.*"],
                                         retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                                         duplicate_window=120, max_age=INBOX_MAX_AGE_S))
        await js.add_stream(StreamConfig(name=names.journal_stream, subjects=[f"{names.prefix}.journal.>"],
                                         storage=StorageType.FILE, duplicate_window=120))
        self._kv = await js.create_key_value(KeyValueConfig(bucket=names.bucket, history=1))
        self._members = await js.create_key_value(KeyValueConfig(bucket=f"{names.bucket}_members", ttl=MEMBER_TTL_S))
        try:
            await self._kv.create("fingerprint", self.fingerprint.encode())
        except KeyWrongLastSequenceError:
            theirs = (await self._kv.get("fingerprint")).value.decode()
            if theirs != self.fingerprint:
                live = await self._live_members()
                if live:
                    raise TransportError(
                        f"this configuration of organism {self.config.name!r} (fingerprint {self.fingerprint}) differs "
                        f"from the one its {len(live)} running member(s) use (fingerprint {theirs}): start every member "
                        "with the same organism.yaml, or stop the others first") from None
                log.warning("organism %s: configuration changed (fingerprint %s -> %s); no member was running",
                            self.config.name, theirs, self.fingerprint)
                await self._kv.put("fingerprint", self.fingerprint.encode())
        for spec_name, cap in self._caps().items():
            consumer = ConsumerConfig(durable_name=names.consumer(spec_name), filter_subject=names.work(spec_name),
                                      ack_wait=ACK_WAIT_S, max_ack_pending=cap, max_deliver=-1)
            await js.add_consumer(names.work_stream, consumer)  # the same: nothing changes; its cap changed: updated
        await self._kv.put(f"journal.{self.id}", b"")  # whoever finds it with this member gone adopts what it left open

    def _caps(self) -> dict[str, int]:
        """Each listener's concurrency cap (organism-wide), as the pump computes it."""
        if self._cap_by_listener is None:
            from agentserver.message_bus.boot import organism_routes

            self._cap_by_listener = {name: listener.concurrency for name, listener in
                                     organism_routes(self.config).by_name.items() if not listener.system}
        return self._cap_by_listener

    async def _live_members(self) -> list[str]:
        from nats.js.errors import NoKeysError

        try:
            return [key for key in await self._members.keys() if key != f"m.{self.id}"]
        except NoKeysError:
            return []

    # -- life -----------------------------------------------------------------------------
    async def __aenter__(self) -> "Member":
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        await self._beat()
        self._heart = self._group.create_task(self._heartbeat(), name="member:heartbeat")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
        assert self._group is not None
        await self._group.__aexit__(*exc_info)

    def durability(self, ctx: "PipelineContext", stores: "Stores", calls: "Calls") -> Transported:
        """The pump's durability (the pump asks for it as it is built)."""
        self._durability = Transported(self.journal, ctx, stores, calls)
        return self._durability

    def serve(self, pump: "StreamPump", socket_path: str | None = None) -> None:
        """Take this member's share of the organism's work, handled with `pump`'s listeners."""
        assert self._group is not None, "use `async with member:`"
        self.pump = pump
        self.socket = socket_path or self.socket
        self._group.create_task(self._open_inbox(), name="member:inbox")
        self._takers = [self._group.create_task(self._take(pump.routes.by_name[name]), name=f"member:take:{name}")
                        for name in self._caps()]

    async def drain(self, timeout: float) -> int:
        """Stop taking work; let the units running here finish within `timeout`; give the
        rest back to JetStream at once (another member takes them). Returns how many."""
        self._draining = True
        if self._takers:  # a fetch under way ends within FETCH_WAIT_S; what it brings is run like the rest
            _, waiting = await asyncio.wait(self._takers, timeout=FETCH_WAIT_S + 1)
            for task in waiting:  # waiting for a slot, not fetching: nothing taken
                task.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)
        left = [task for task in self._running if not task.done()]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=2.0)
            log.info("member %s: %d units cut off by the shutdown deadline go to other members", self.id, len(left))
        return len(left)

    async def close(self) -> None:
        if self._closed:
            return
        if not self._draining:
            await self.drain(0)
        self._closed = True
        if self._heart is not None:
            self._heart.cancel()
        with contextlib.suppress(Exception):
            await self._members.delete(f"m.{self.id}")
        if not self.journal.open and self.journal.lag == 0:  # nothing left open here for another to adopt
            with contextlib.suppress(Exception):
                await self._kv.delete(f"journal.{self.id}")
        elif self.journal.open:
            log.info("member %s: %d open conversations are left for another member to adopt", self.id, self.journal.open)
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(self.names.inbox_stream, self.names.member_consumer(self.id))
        with contextlib.suppress(Exception):
            await self.nc.close()

    # -- the owner's side: a handler call that runs wherever there is room ----------------
    async def invoke(self, listener: "Listener", state: MessageState, meta: HandlerMetadata) -> Any:
        """Run `listener`'s handler on `state` on some member; return what it returned."""
        assert self.pump is not None
        unit = f"{self.id}.{next(self._units)}"
        element = state.payload_element
        assert element is not None
        invocation = _Invocation(meta, asyncio.get_running_loop().create_future())
        self._invocations[unit] = invocation
        try:
            work = Work(unit, self.id, listener.name, etree.tostring(element, encoding="unicode"), _meta_fields(meta, state),
                        encode_history(meta.history, self._to_xml))
            await self.publish(self.names.work(listener.name), encode(work), unit)
            assert self._durability is not None
            self._durability.published(state)  # the client's ack follows JetStream's
            result = await invocation.future
        finally:
            del self._invocations[unit]
            for task in invocation.asks:  # calls of a worker that died: its unit ran again elsewhere
                task.cancel()
            if invocation.asks:
                await asyncio.wait(invocation.asks)
        if result.error is not None:
            raise HandlerFailed(result.error["code"], result.error["reason"])
        return decode_items(result.items, self._from_xml)

    async def _answer(self, invocation: _Invocation, ask: Ask) -> None:
        """A handler running elsewhere awaits a peer: make the call here, where its conversation is."""
        try:
            value = await invocation.meta.ask(ask.peer, self._from_xml(ask.payload), timeout=ask.timeout)
            answer = Answer(ask.ask, payload=self._to_xml(value))
        except PeerError as exc:
            answer = Answer(ask.ask, error={"code": exc.code, "peer": exc.peer, "call_id": exc.call_id, "message": str(exc)})
        except TimeoutError:
            answer = Answer(ask.ask, error={"code": "timeout", "peer": ask.peer, "call_id": "", "message": ""})
        except Exception as exc:  # what the pump refused before sending (a payload that is not @xmlify)
            answer = Answer(ask.ask, error={"code": "wrong-type", "peer": ask.peer, "call_id": "", "message": str(exc)})
        await self.publish(self.names.inbox(ask.worker), encode(answer), f"n.{ask.ask}")

    # -- the inbox: results, asks and answers addressed to this member ------------------
    async def _open_inbox(self) -> None:
        from nats.js.api import ConsumerConfig

        config = ConsumerConfig(ack_wait=30.0, inactive_threshold=INBOX_MAX_AGE_S)
        while self._inbox is None and not self._closed:
            try:
                self._inbox = await self.js.subscribe(
                    self.names.inbox(self.id), durable=self.names.member_consumer(self.id),
                    stream=self.names.inbox_stream, cb=self._on_inbox, manual_ack=True, config=config)
            except Exception as exc:  # NATS away right now: results wait in the stream meanwhile
                log.warning("member %s: cannot open its inbox yet (%s); retrying", self.id, exc)
                await asyncio.sleep(0.5)

    async def _on_inbox(self, msg: Any) -> None:
        try:
            message = decode(msg.data)
        except WireError as exc:
            log.error("member %s: an inbox message dropped: %s", self.id, exc)
            await msg.term()
            return
        if isinstance(message, Result):
            invocation = self._invocations.get(message.unit)
            if invocation is not None and not invocation.future.done():
                invocation.future.set_result(message)  # else: late (its caller gave up) or a duplicate
        elif isinstance(message, Ask):
            invocation = self._invocations.get(message.unit)
            if invocation is None:
                answer = Answer(message.ask, error={"code": "late", "peer": message.peer, "call_id": "", "message": ""})
                self.spawn(self.publish(self.names.inbox(message.worker), encode(answer), f"n.{message.ask}"))
            else:
                task = self.spawn(self._answer(invocation, message))
                invocation.asks.add(task)
                task.add_done_callback(invocation.asks.discard)
        elif isinstance(message, Answer):
            waiter = self._asks.get(message.ask)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        await msg.ack()

    def spawn(self, coroutine: Any, name: str | None = None) -> "asyncio.Task[None]":
        """A task of the member's group. What it raises is logged: in a task group it would
        cancel every other task of the member (its fetch loops among them)."""
        assert self._group is not None

        async def logged() -> None:
            try:
                await coroutine
            except Exception as exc:
                if not self._closed:
                    log.error("member %s: %s", self.id, exc, exc_info=exc)

        return self._group.create_task(logged(), name=name)

    # -- the worker's side ----------------------------------------------------------------
    async def _take(self, listener: "Listener") -> None:
        """Fetch units of `listener` while this member has a free handler slot."""
        import nats.errors

        subscription = None
        while not self._draining:
            try:
                subscription = subscription or await self.js.pull_subscribe_bind(
                    durable=self.names.consumer(listener.name), stream=self.names.work_stream)
            except Exception as exc:
                log.debug("member %s: cannot bind %s yet: %s", self.id, listener.name, exc)
                await asyncio.sleep(0.5)
                continue
            await self._slots.acquire()
            try:
                messages = await subscription.fetch(1, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                self._slots.release()
                continue
            except Exception as exc:  # NATS away: wait for it
                self._slots.release()
                log.debug("member %s: fetch %s: %s", self.id, listener.name, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                task = self.spawn(self._work(listener, msg))
                self._running[task] = msg

    async def _work(self, listener: "Listener", msg: Any) -> None:
        alive = self.spawn(self._keep_alive(msg))
        slot = _Slot()
        try:
            try:
                work = decode(msg.data)
                assert isinstance(work, Work)
            except (WireError, AssertionError) as exc:
                log.error("member %s: a unit for %s dropped: %s", self.id, listener.name, exc)
                await msg.term()
                return
            result = await self._run(listener, work, msg.metadata.num_delivered > 1, slot)
            self.executed += 1
            await self.publish(self.names.inbox(work.owner), encode(result), f"r.{work.unit}")
            await msg.ack()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())  # cut off here: another member runs it again
            raise
        finally:
            alive.cancel()
            self._running.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if slot.held:
                self._slots.release()

    async def _keep_alive(self, msg: Any) -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _run(self, listener: "Listener", work: Work, redelivered: bool, slot: "_Slot") -> Result:
        """Call the handler as the owner would have, under the same deadline."""
        pump = self.pump
        assert pump is not None
        fields = work.meta
        meta = HandlerMetadata(
            thread_id=fields["thread_id"], from_id=fields["from_id"], own_name=fields["own_name"],
            is_self_call=fields["is_self_call"], usage_instructions=fields["usage_instructions"],
            todo_nudge=fields["todo_nudge"], history=decode_history(work.history, self._from_xml),
            conversation_id=fields["conversation_id"], message_id=fields["message_id"], call_id=fields["call_id"],
            redelivered=bool(fields["redelivered"]) or redelivered,
            _ask=lambda peer, payload, timeout: self._ask_owner(work, slot, peer, payload, timeout),
            _llm=lambda messages, **options: ask_model(pump.handlers.llm, listener,
                                                       SimpleNamespace(id=fields["conversation"]),  # type: ignore[arg-type]
                                                       messages, **options),
        )
        timeout = self.config.limits.handler_timeout_s
        try:
            payload = self._from_xml(work.payload)
            async with asyncio.timeout(timeout) as deadline:
                value = await listener.handler(payload, meta)
        except TimeoutError:
            if not deadline.expired():
                return _failed(work, ErrorCode.HANDLER, f"{listener.name} raised TimeoutError", self.id)
            return _failed(work, ErrorCode.TIMEOUT, f"{listener.name} ran over {timeout}s", self.id)
        except Exception as exc:
            code = llm_code(exc)
            if code is not None:
                return _failed(work, code, f"{listener.name}: {type(exc).__name__}: {exc}", self.id)
            log.error("%s raised on member %s", listener.name, self.id, exc_info=exc)
            return _failed(work, ErrorCode.HANDLER, f"{listener.name} raised {type(exc).__name__}: {exc}", self.id)
        try:
            return Result(work.unit, encode_items(value, self._to_xml), worker=self.id)
        except (TypeError, ValueError) as exc:  # what it returned cannot travel: what it may not return
            return _failed(work, ErrorCode.WRONG_TYPE, f"{listener.name}: {exc}", self.id)

    async def _ask_owner(self, work: Work, slot: "_Slot", peer: str, payload: Any, timeout: float | None) -> Any:
        """`meta.ask` of a handler running here: the owner makes the call. While it waits the
        handler holds no slot of this member (as in one process), so awaiting chains cannot
        take every slot; it still counts against its listener's cap until its unit ends."""
        ask_id = f"{self.id}.a{next(self._units)}"
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = waiter
        slot.asking += 1
        if slot.asking == 1 and slot.held:
            slot.held = False
            self._slots.release()
        try:
            await self.publish(self.names.inbox(work.owner), encode(Ask(work.unit, ask_id, self.id, peer,
                                                                         self._to_xml(payload), timeout)), ask_id)
            answer = await waiter
        finally:
            del self._asks[ask_id]
            slot.asking -= 1
            if slot.asking == 0 and not slot.held:
                await self._slots.acquire()  # cancelled here: it holds none, and _work knows
                slot.held = True
        if answer.error is not None:
            if answer.error["code"] == "timeout":
                raise TimeoutError(f"meta.ask({peer!r}): no answer within {timeout}s")
            if answer.error["code"] == "wrong-type":
                raise TypeError(answer.error["message"])
            raise PeerError(answer.error["code"], answer.error["peer"], answer.error["call_id"])
        assert answer.payload is not None
        return self._from_xml(answer.payload)

    # -- NATS -----------------------------------------------------------------------------
    async def publish(self, subject: str, data: bytes, message_id: str) -> None:
        """Publish until JetStream has it (the same message id each try: a repeat is dropped there)."""
        await self._retry(f"publishing to {subject}", lambda: self.js.publish(
            subject, data, timeout=PUBLISH_TIMEOUT_S, headers={"Nats-Msg-Id": message_id}))

    async def _retry(self, what: str, call: Callable[[], Any]) -> None:
        delay, warned = 0.05, False
        while True:
            try:
                await call()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    raise TransportError(f"member {self.id} is closed; {what} not done") from None
                if not warned:
                    log.warning("member %s: %s failed (%s: %s); retrying until NATS takes it",
                                self.id, what, type(exc).__name__, exc)
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _heartbeat(self) -> None:
        while not self._closed:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
            except Exception as exc:  # NATS away: `status` keeps the last view, and says so
                log.debug("member %s: heartbeat: %s", self.id, exc)

    async def _beat(self) -> None:
        """Say this member is alive, and read the organism-wide view `status` shows."""
        from nats.js.errors import NoKeysError

        await self._members.put(f"m.{self.id}", json.dumps({
            "id": self.id, "pid": os.getpid(), "host": socket.gethostname(), "started": self.started,
            "socket": self.socket, "executed": self.executed, "running": len(self._running)}).encode())
        members = []
        try:
            for key in await self._members.keys():
                with contextlib.suppress(Exception):
                    members.append(json.loads((await self._members.get(key)).value))
        except NoKeysError:
            pass
        await self._adopt_orphans({entry["id"] for entry in members})
        listeners = {}
        for name in self._caps():
            info = await self.js.consumer_info(self.names.work_stream, self.names.consumer(name))
            listeners[name] = {"pending": info.num_pending, "in_flight": info.num_ack_pending,
                               "redelivered": info.num_redelivered, "cap": info.config.max_ack_pending}
        self._view = {"members": sorted(members, key=lambda item: item["id"]), "listeners": listeners}

    # -- adopting what a gone member left open ---------------------------------------------
    async def _adopt_orphans(self, live: set[str]) -> None:
        """Claim (compare-and-set on its `journal.<member>` key) the journal of each member
        that is gone, and adopt what it left open. One member adopts each."""
        from nats.js.errors import KeyWrongLastSequenceError, NoKeysError

        if self.pump is None or self._draining or self._closed:
            return
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return
        for key in keys:
            gone = key.partition(".")[2]
            if not key.startswith("journal.") or gone == self.id or gone in live or gone in self._adopting:
                continue
            try:
                entry = await self._kv.get(key)
                claimant = (entry.value or b"").decode()
                if claimant and claimant in live and claimant != self.id:
                    continue  # a live member is adopting it
                await self._kv.update(key, self.id.encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # another member claimed it first
            except Exception as exc:  # adopted and deleted meanwhile, or NATS away: the next heartbeat looks again
                log.debug("member %s: %s: %s", self.id, key, exc)
                continue
            self._adopting.add(gone)
            self.spawn(self._adopt(gone, key), name=f"member:adopt:{gone}")

    async def _adopt(self, gone: str, key: str) -> None:
        pump, durability = self.pump, self._durability
        assert pump is not None and durability is not None
        try:
            ops = await self._read_journal(gone)
            snapshot = await asyncio.to_thread(fold, ops, self.config.name)
            units = durability.adopt(snapshot)
            for state in units:
                pump.push(state)
            await self.journal.durable()  # kept as this member's own: the gone member's copy can go
            await self.purge(self.names.journal(gone))
            await self._kv.delete(key)
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.names.inbox_stream, self.names.member_consumer(gone))
            self.adopted += len(snapshot.conversations)
            if snapshot.conversations or units:
                log.warning("member %s: member %s is gone; adopted its %d open conversations, %d units not done run "
                            "again here (redelivered)", self.id, gone, len(snapshot.conversations), len(units))
        finally:
            self._adopting.discard(gone)

    async def _read_journal(self, member: str) -> list[tuple[Any, ...]]:
        """Every journal operation `member` left in the stream, in order."""
        from nats.js.api import AckPolicy, ConsumerConfig

        subscription = await self.js.pull_subscribe(self.names.journal(member), stream=self.names.journal_stream,
                                                    config=ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60))
        ops: list[tuple[Any, ...]] = []
        try:
            left = (await subscription.consumer_info()).num_pending
            while left > 0:
                for msg in await subscription.fetch(min(left, 256), timeout=10):
                    left -= 1
                    try:
                        ops.extend(decode_ops(msg.data))
                    except WireError as exc:
                        log.error("member %s: a journal message of member %s dropped: %s", self.id, member, exc)
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return ops

    async def purge(self, subject: str) -> None:
        """Drop what the journal stream holds on `subject`, retried until NATS takes it."""
        await self._retry(f"purging {subject}", lambda: self.js.purge_stream(self.names.journal_stream, subject=subject))

    # -- payloads -------------------------------------------------------------------------
    def _to_xml(self, payload: Any) -> str:
        """`payload` as "module:Class" and its XML: the other member may not know the class
        by its root tag (a reply class no listener takes)."""
        assert self.pump is not None
        cls = type(payload)
        payload_type = self.pump.routes.payload_types.for_class(cls)
        if payload_type is None:
            raise ValueError(f"{cls.__name__} is not an @xmlify dataclass")
        xml = etree.tostring(payload_type.to_element(payload), encoding="unicode")
        return f"{cls.__module__}:{cls.__qualname__}\n{xml}"

    def _from_xml(self, text: str) -> Any:
        assert self.pump is not None
        payload_types = self.pump.routes.payload_types
        class_path, _, xml = ("", "", text) if text.startswith("<") else text.partition("\n")
        (element,) = self.pump.ctx.xml.fragment(xml)
        payload_type = self._class_type(class_path) if class_path else payload_types.get(element.tag)
        if payload_type is None:
            raise WireError(f"no payload class for <{element.tag}> here")
        return payload_type.from_element(element)

    def _class_type(self, class_path: str) -> Any:
        """The payload type of the class named "module:Qual.Name" (members run the same code)."""
        assert self.pump is not None
        module_name, _, qualname = class_path.partition(":")
        try:
            found: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError) as exc:
            raise WireError(f"payload class {class_path} cannot be imported here: {exc}") from None
        payload_type = self.pump.routes.payload_types.for_class(found)
        if payload_type is None:
            raise WireError(f"{class_path} is not an @xmlify dataclass")
        return payload_type

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """`status`'s "members": this member, the live members and each listener's work
        across the organism (as of the last heartbeat)."""
        return {"transport": self.url, "member": self.id, "connected": self.connected and self.nc.is_connected,
                "fingerprint": self.fingerprint, "executed": self.executed, "running": len(self._running),
                "waiting_on_others": len(self._invocations), "adopted": self.adopted, **self._view}


def _meta_fields(meta: HandlerMetadata, state: MessageState) -> dict[str, Any]:
    conversation = state.conversation
    return {"thread_id": meta.thread_id, "from_id": meta.from_id, "own_name": meta.own_name,
            "is_self_call": meta.is_self_call, "usage_instructions": meta.usage_instructions,
            "todo_nudge": meta.todo_nudge, "conversation_id": meta.conversation_id, "message_id": meta.message_id,
            "call_id": meta.call_id, "redelivered": meta.redelivered,
            "conversation": conversation.key if conversation is not None else ""}


def _failed(work: Work, code: str, reason: str, worker: str) -> Result:
    return Result(work.unit, error={"code": str(code), "reason": reason}, worker=worker)
