"""StreamPump: the path of a message, top to bottom.

    inject() ──► intake lane (bounded) ─┐
                                        ├─► FairScheduler ─► _admitted() ─► pipeline ─► _dispatch()
    handler output ──► response lane ───┘   (round-robin        (at most      (aiostream:   │
          ▲                                  by client and       max_concurrent  8 steps)    │
          │                                  conversation)       _pipelines)                 ▼
          └──────────── _handle(): run the handler, build_responses() ◄── per-listener caps, global cap

1. `inject` (external senders) and `_push_response` (handler output, system messages)
   put units of work into the scheduler. Intake is bounded: a full intake makes
   `inject` wait. Responses never wait, so handlers cannot deadlock on their output.
2. `_admitted` hands the pipeline batches of what is ready, in fair order, with at
   most `max_concurrent_pipelines` units between admission and their handler's start
   (a ticket per envelope, shared by its fan-out copies, given back when a copy
   starts, is parked for a busy listener, or ends). An external message keeps its
   place in the bounded intake until its handler starts, so a backlog for a slow
   listener still pushes back on clients. It waits on an event; it never polls.
3. `_pipeline` is the aiostream composition of the steps in `steps/`: repair, c14n,
   envelope validation, payload extraction (fan-out), thread assignment, XSD
   validation, deserialization, routing (fan-out), each applied to a whole batch.
   Errors ride along in the state.
4. `_dispatch` ends errored units (`_fail`), hands replies to clients, and starts
   handlers: a global slot (`max_concurrent_handlers`) and a per-listener slot; a
   listener at its cap parks the unit without holding back other listeners.
5. `_handle` runs one handler under `handler_timeout_s` (one shared timer:
   `Deadlines`) and turns its return value into new units (`build_responses`) that
   go back to step 1. Dispatch yields to the loop every millisecond so started
   handlers run while the pipeline is busy.

Every unit ends exactly once: `_settle` (handled) or `_fail` (errored, answered to
whoever should hear about it, logged and recorded as a dead letter).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

from aiostream import stream
from lxml import etree

from agentserver.config import OrganismConfig
from agentserver.limits import is_reserved
from agentserver.envelope import NIL_THREAD, build_envelope, build_huh, load_envelope_schema
from agentserver.message_bus.context_buffer import ContextBuffer
from agentserver.message_bus.counters import Counters
from agentserver.message_bus.dead_letters import DeadLetters
from agentserver.message_bus.deadlines import Deadlines
from agentserver.message_bus.listeners import Listener, Routes
from agentserver.message_bus.message_state import (
    SYSTEM_ORIGIN,
    HandlerMetadata,
    HistoryEntry,
    MessageState,
    Origin,
    OriginKind,
    Ticket,
)
from agentserver.message_bus.operators import each, fan_out
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.responses import WrongType, build_responses, payload_element
from agentserver.message_bus.scheduler import FairScheduler
from agentserver.message_bus.steps import (
    assign_thread,
    canonicalize,
    deserialize,
    extract_payloads,
    repair,
    route,
    validate_envelope,
    validate_payload,
)
from agentserver.message_bus.thread_registry import Thread, ThreadRegistry
from agentserver.message_bus.todo_registry import TodoRegistry, TooManyTodos
from agentserver.outbound import Outbound
from agentserver.primitives import ERROR_CODES, Boot, TodoComplete, TodoUntil, system_error
from agentserver.xmlsafe import SafeXml

__all__ = ["StreamPump", "PumpClosed", "ShutdownReport"]

log = logging.getLogger("agentserver.pump")

BATCH = 64  # most units taken from the scheduler for one pass through the pipeline
SLICE_S = 0.001  # dispatch gives the event loop back at least this often, so started handlers run

Mailbox = Callable[[Outbound], bool]


class PumpClosed(RuntimeError):
    """The pump is shutting down and takes no new messages."""


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    handled: int
    errored: int
    dropped: int  # units cancelled or never started because of the shutdown
    clean: bool  # everything in flight finished before the deadline

    def __str__(self) -> str:
        state = "clean" if self.clean else "deadline reached"
        return f"handled={self.handled} errored={self.errored} dropped={self.dropped} ({state})"


async def handle_boot(payload: Boot, metadata: HandlerMetadata) -> None:
    """The built-in `system.boot` listener: logs that the organism is up."""
    log.info("boot organism=%s listeners=%d", payload.organism_name, payload.listener_count)
    return None


class StreamPump:
    def __init__(self, config: OrganismConfig) -> None:
        self.config = config
        limits = config.limits
        # state the pump owns; nothing here is shared with another pump
        self.counters = Counters()
        self.context = ContextBuffer(limits.context_slots, limits.context_threads)
        self.todos = TodoRegistry()
        self.threads = ThreadRegistry(on_forget=self._forget_threads)
        self.dead_letters = DeadLetters(limits.dead_letters)
        self.routes = Routes.from_config(config)
        self.routes.add(Listener(name="system.boot", payload_type=self.routes.payload_types.add(Boot),
                                 handler=handle_boot, system=True, description="Logs the boot message."))
        self.ctx = PipelineContext(
            xml=SafeXml(limits.max_message_bytes),
            envelope_schema=load_envelope_schema(),
            routes=self.routes,
            threads=self.threads,
            limits=limits,
        )
        self._scheduler: FairScheduler[MessageState] = FairScheduler(config.thread_scheduling == "depth-first")
        self._work = asyncio.Event()
        self._idle = asyncio.Event()
        self._intake_space = asyncio.Semaphore(limits.intake_capacity)
        self._admission_room = config.max_concurrent_pipelines  # units admitted, not yet started
        self._deadlines = Deadlines(limits.handler_timeout_s)
        self._handler_slots = asyncio.Semaphore(config.max_concurrent_handlers)
        self._running: dict[str, int] = {name: 0 for name in self.routes.by_name}
        self._parked: dict[str, deque[MessageState]] = {name: deque() for name in self.routes.by_name}
        self._tasks: set[asyncio.Task] = set()  # running handlers; owned here, cancelled on shutdown
        self._mailboxes: dict[str, Mailbox] = {}
        self._closing = False  # no new intake
        self._stopping = False  # drop whatever has not started
        self._run_task: asyncio.Task | None = None
        self._last_sweep = 0.0
        self._queue_boot()

    # ------------------------------------------------------------------ 1. intake
    async def inject(self, raw: bytes, *, thread_id: str | None = None, from_id: str | None = None) -> None:
        """Queue one envelope from an external sender; waits while the intake is full.

        `from_id` is the sender's trusted identity (a connection's name): the envelope's
        `<from>` must match it. `thread_id` groups the message for fair scheduling, and
        is the thread a `<huh>` carries when the bytes are refused before their own
        `<thread>` could be read (too large, malformed), so an `ask` still hears of it.
        """
        if self._closing:
            raise PumpClosed("the pump is shutting down")
        await self._intake_space.acquire()
        if self._closing:
            self._intake_space.release()
            raise PumpClosed("the pump is shutting down")
        state = MessageState(raw=bytes(raw), origin=Origin.external(from_id), thread_hint=thread_id)
        self._accept(state)
        self._scheduler.push(("client", from_id if from_id is not None else thread_id), state, intake=True)
        self._work.set()

    def _push_response(self, state: MessageState) -> None:
        """Queue a unit the pump built. Never waits (see module docstring)."""
        self._accept(state)
        conversation = state.conversation
        self._scheduler.push(("conversation", conversation.id if conversation else None), state)
        self._work.set()

    def _queue_boot(self) -> None:
        root = self.threads.open("system")
        boot = Boot(
            organism_name=self.config.name,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            listener_count=sum(1 for listener in self.routes.by_name.values() if not listener.system),
        )
        self._push_response(self._system_message(boot, to=None, thread=root))

    # ------------------------------------------------------------------ 2. admission
    async def _admitted(self) -> AsyncIterator[list[MessageState]]:
        """Batches of units in fair order: what is ready, within the admission room."""
        while True:
            batch = self._take_batch()
            while not batch:
                if self._stopping:
                    return
                self._work.clear()  # set again by a push or by a freed admission place
                await self._work.wait()
                batch = self._take_batch()
            yield batch

    def _take_batch(self) -> list[MessageState]:
        batch = []
        while self._admission_room and len(batch) < BATCH:
            popped = self._scheduler.pop()
            if popped is None:
                break
            state, from_intake = popped
            if from_intake:
                state.intake_ticket = Ticket(self._intake_space.release)
            state.ticket = Ticket(self._admission_freed)
            self._admission_room -= 1
            batch.append(state)
        return batch

    def _admission_freed(self) -> None:
        self._admission_room += 1
        if self._admission_room == 1:
            self._work.set()

    # ------------------------------------------------------------------ 3. pipeline
    def _pipeline(self):
        """Batches of routed units. Fan-out copies are counted as units of their own."""
        ctx = self.ctx
        return (
            stream.iterate(self._admitted())
            | each.pipe(repair, ctx)
            | each.pipe(canonicalize, ctx)
            | each.pipe(validate_envelope, ctx)
            | fan_out.pipe(extract_payloads, ctx, self._accept)
            | each.pipe(assign_thread, ctx)
            | each.pipe(validate_payload, ctx)
            | each.pipe(deserialize, ctx)
            | fan_out.pipe(route, ctx, self._accept)
        )

    async def run(self) -> None:
        """Move messages until `shutdown()`. Run it as a task; it returns when stopped."""
        if self._run_task is not None:
            raise RuntimeError("this pump is already running")
        self._run_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + SLICE_S
        try:
            async with self._pipeline().stream() as batches:
                async for batch in batches:
                    for state in batch:
                        await self._dispatch(state)
                        if loop.time() >= slice_end:  # let the handlers just started run
                            await asyncio.sleep(0)
                            slice_end = loop.time() + SLICE_S
        finally:
            await self._cancel_handlers()
            self._deadlines.close()

    # ------------------------------------------------------------------ 4. dispatch
    async def _dispatch(self, state: MessageState) -> None:
        if state.error is not None:
            self._fail(state)
            return
        if self._stopping:
            self._fail(state, "shutdown", "not started before shutdown", answer=False)
            return
        target = state.target
        if isinstance(target, str):
            self._deliver_to_client(state, target)
            return
        self._record(state)
        if self._running[target.name] >= target.concurrency:
            state.leave_pipeline()  # a parked unit must not hold back other listeners' messages
            self._parked[target.name].append(state)
            self.counters.listener(target.name).waiting += 1
            return
        await self._handler_slots.acquire()
        if self._stopping:
            self._handler_slots.release()
            self._fail(state, "shutdown", "not started before shutdown", answer=False)
            return
        self._start(target, state)

    def _start(self, listener: Listener, state: MessageState) -> None:
        """Run the handler in a task this pump owns (it holds one global slot).

        The unit leaves the pipeline and the intake: from here on the handler caps bound it.
        """
        state.leave_pipeline()
        state.leave_intake()
        self._running[listener.name] += 1
        stats = self.counters.listener(listener.name)
        stats.delivered += 1
        stats.running += 1
        task = asyncio.create_task(self._handle(listener, state), name=f"handler:{listener.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, state: MessageState) -> None:
        """Context buffer (once per delivery thread) and todo watchers see the message;
        the conversation is active (so it is not forgotten as idle while it is busy)."""
        thread = state.delivery_thread
        self.threads.touch(thread.conversation, self.ctx.clock())
        self.context.append(thread.id, HistoryEntry(state.sender, state.target.name, state.root_tag, state.payload))
        self.todos.observe(thread.id, state.root_tag, state.sender)

    # ------------------------------------------------------------------ 5. handlers
    async def _handle(self, listener: Listener, state: MessageState) -> None:
        thread = state.delivery_thread
        meta = HandlerMetadata(
            thread_id=thread.id,
            from_id=state.sender,
            own_name=listener.name if listener.agent else None,
            is_self_call=state.sender == listener.name,
            usage_instructions=listener.usage_instructions,
            todo_nudge=self.todos.nudge_for(thread.id, listener.name) if listener.agent else "",
            history=self.context.history(thread.id),
        )
        stats = self.counters.listener(listener.name)
        cancelled = False
        task = asyncio.current_task()
        deadline = self._deadlines.watch(task)
        try:
            try:
                result = await listener.handler(state.payload, meta)
            except asyncio.CancelledError:
                if not self._deadlines.claim(task):
                    raise
                task.uncancel()
                stats.errored += 1
                self._fail(state, "timeout", f"{listener.name} ran over {self.config.limits.handler_timeout_s}s", to_caller=True)
                return
            try:
                responses = build_responses(result, sender=listener.name, thread=thread, ctx=self.ctx)
            except WrongType as exc:
                stats.errored += 1
                self._fail(state, "wrong-type", f"{listener.name}: {exc}", to_caller=True)
                return
            for todo in responses.todos:
                self._apply_todo(todo, listener.name, thread)
            for response in responses.states:
                self._push_response(response)
            stats.handled += 1
            self._settle(state)
        except asyncio.CancelledError:
            cancelled = True
            stats.errored += 1
            self._fail(state, "shutdown", f"{listener.name} cancelled by shutdown", answer=False)
            raise
        except Exception as exc:
            stats.errored += 1
            log.error("handler %s raised on thread %s", listener.name, thread.id, exc_info=exc)
            self._fail(state, "handler", f"{listener.name} raised {type(exc).__name__}: {exc}", to_caller=True)
        finally:
            self._deadlines.unwatch(task, deadline)
            stats.running -= 1
            self._handler_done(listener, cancelled)

    def _handler_done(self, listener: Listener, cancelled: bool) -> None:
        """Hand the freed slots to this listener's next parked unit, or give them back."""
        parked = self._parked[listener.name]
        if parked and not cancelled and not self._stopping:
            state = parked.popleft()
            stats = self.counters.listener(listener.name)
            stats.waiting -= 1
            self._running[listener.name] -= 1
            self._start(listener, state)  # reuses the global slot this handler held
            return
        self._running[listener.name] -= 1
        self._handler_slots.release()

    def _apply_todo(self, todo: TodoUntil | TodoComplete, issuer: str, thread: Thread) -> None:
        if isinstance(todo, TodoComplete):
            self.todos.complete(thread.id, issuer, todo.todo_id)
            return
        try:
            self.todos.add(thread.id, issuer, todo.todo_id, todo.wait_for, todo.from_listener, todo.note)
        except TooManyTodos as exc:
            log.warning("todo refused issuer=%s thread=%s: %s", issuer, thread.id, exc)

    # ------------------------------------------------------------------ replies to clients
    def _deliver_to_client(self, state: MessageState, client: str) -> None:
        if client == "system":  # a respond() at the root of a system conversation: done
            self._settle(state)
            return
        conversation = state.delivery_thread.conversation
        thread_id = conversation.external_id or NIL_THREAD
        element, sender = state.payload_element, state.sender

        def frame() -> bytes:  # built only if a socket client needs the bytes
            return etree.tostring(build_envelope(copy.deepcopy(element), sender=sender, to=client, thread=thread_id))

        outbound = Outbound("reply", thread_id, sender, frame, state.payload, element)
        if self._to_mailbox(client, outbound):
            self._settle(state)
        else:
            self._fail(state, "undeliverable", f"client {client!r} is gone or not reading", answer=False)

    def _to_mailbox(self, client: str, outbound: Outbound) -> bool:
        mailbox = self._mailboxes.get(client)
        if mailbox is None:
            return False
        try:
            return bool(mailbox(outbound))
        except Exception:  # a client's callback must not break the pump
            log.exception("mailbox of %s failed", client)
            return False

    def attach(self, name: str, mailbox: Mailbox) -> None:
        """Register an external client: frames for `name` go to `mailbox` (returns False if full)."""
        if name in self.routes.by_name or is_reserved(name):
            raise ValueError(f"{name!r} names a listener or a reserved name; pick another client name")
        if name in self._mailboxes:
            raise ValueError(f"a client named {name!r} is already attached")
        self._mailboxes[name] = mailbox

    def detach(self, name: str) -> None:
        self._mailboxes.pop(name, None)

    def client(self, name: str, **options: Any):
        """An in-process client for an external sender: `async with pump.client("me") as c`."""
        from agentserver.message_bus.local_client import LocalClient

        return LocalClient(self, name, **options)

    # ------------------------------------------------------------------ outcomes
    def _accept(self, state: MessageState) -> None:
        self.counters.accepted += 1
        self._idle.clear()

    def _settle(self, state: MessageState) -> None:
        """The unit ended well."""
        self.counters.handled += 1
        self._end(state)

    def _end(self, state: MessageState) -> None:
        state.release()
        if self.counters.in_flight == 0:
            self._idle.set()
        now = self.ctx.clock()
        if now - self._last_sweep > 1.0:
            self._last_sweep = now
            self.threads.forget_idle(now, self.config.limits.thread_idle_s)

    def _fail(self, state: MessageState, code: str | None = None, reason: str = "", *, to_caller: bool = False, answer: bool = True) -> None:
        """The unit ended in an error: count, log, record, and tell who should know."""
        if code is not None:
            state.error = None
            state.fail(code, reason, "dispatch")
        error = state.error
        self.counters.error(error.code)
        thread = state.delivery_thread or state.thread
        # an external sender is who its connection is, whatever its <from> claims
        sender = (state.origin.kind is OriginKind.EXTERNAL and state.origin.name) or state.sender or state.origin.name or ""
        conversation = thread.conversation if thread is not None else None
        repeat = error.code == "hops" and conversation is not None and conversation.told  # said once already
        log.log(
            logging.DEBUG if repeat else logging.WARNING,
            "refused code=%s step=%s from=%s to=%s thread=%s reason=%s",
            error.code, error.step, sender, getattr(state.target, "name", state.target) or state.to,
            thread.id if thread else state.thread_ref, error.reason,
        )
        self.dead_letters.record(
            time=time.time(), code=error.code, reason=error.reason, step=error.step,
            sender=sender, thread=thread.id if thread else state.thread_ref,
            raw=state.canonical or state.raw or _canonical(state.root),
        )
        try:
            if answer and error.code == "hops":
                # told once per conversation (even when the unit over the limit was itself
                # an error report): the conversation is ended, so this cannot loop
                self._tell_root(state)
            elif answer and not state.is_error_report:
                if to_caller:
                    self._tell_caller(state, error.code)
                else:
                    self._tell_sender(state, error.code)
        finally:
            self._end(state)

    def _tell_sender(self, state: MessageState, code: str) -> None:
        kind = state.origin.kind
        if kind is OriginKind.EXTERNAL:
            client = state.origin.name or state.sender
            if client:
                thread_id = state.thread_ref or state.thread_hint or NIL_THREAD
                huh = build_huh(to=client, thread=thread_id, code=code, message=ERROR_CODES.get(code, "Error."))
                outbound = Outbound("huh", thread_id, "system", huh, code=code, message=ERROR_CODES.get(code, ""))
                if not self._to_mailbox(client, outbound):
                    self._report_undeliverable(client, thread_id, code, huh)
        elif kind is OriginKind.LISTENER and state.sender_thread is not None:
            self._push_response(self._system_message(system_error(code), to=state.sender_thread.owner, thread=state.sender_thread))

    def _tell_caller(self, state: MessageState, code: str) -> None:
        parent = state.delivery_thread.parent
        if parent is None:
            return
        if parent.parent is None and parent.conversation.external_id is not None:
            self._tell_client(parent.conversation.client, parent.conversation.external_id, code)
        elif parent.owner in self.routes.by_name:
            self._push_response(self._system_message(system_error(code), to=parent.owner, thread=parent))

    def _tell_root(self, state: MessageState) -> None:
        conversation = state.thread.conversation if state.thread else None
        if conversation is None or conversation.told:
            return
        conversation.told = True
        if conversation.external_id is not None:
            self._tell_client(conversation.client, conversation.external_id, "hops")

    def _tell_client(self, client: str, thread_id: str, code: str) -> None:
        error = system_error(code)
        element = payload_element(error, self.ctx)
        envelope = etree.tostring(build_envelope(element, sender="system", to=client, thread=thread_id))
        if not self._to_mailbox(client, Outbound("reply", thread_id, "system", envelope, error, element)):
            self._report_undeliverable(client, thread_id, code, envelope)

    def _report_undeliverable(self, client: str, thread_id: str, code: str, frame: bytes) -> None:
        """An error report the client cannot take: an error about an error, logged and recorded only."""
        reason = f"error report ({code}) to client {client!r}: the client is gone or not reading"
        log.warning("undeliverable error report code=%s to=%s thread=%s", code, client, thread_id)
        self.dead_letters.record(time=time.time(), code="undeliverable", reason=reason, step="report",
                                 sender="system", thread=thread_id, raw=frame)

    def _system_message(self, payload: Any, *, to: str | None, thread: Thread) -> MessageState:
        root = build_envelope(payload_element(payload, self.ctx), sender="system", to=to, thread=thread.id,
                              factory=self.ctx.xml.makeelement)
        state = MessageState(raw=b"", origin=SYSTEM_ORIGIN, root=root, prebuilt=True, sender="system", to=to,
                             thread_ref=thread.id, thread=thread, is_error_report=to is not None)
        state.bind(thread.conversation)
        return state

    def _forget_threads(self, thread_ids: list[str]) -> None:
        self.context.forget(thread_ids)
        self.todos.forget(thread_ids)

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Stop intake, let in-flight work finish within `timeout`, cancel the rest.

        Returns what happened; what was cancelled or never started is `dropped`.
        """
        timeout = self.config.limits.shutdown_timeout_s if timeout is None else timeout
        self._closing = True
        dropped_before = self.counters.errored["shutdown"]
        clean = True
        if self._run_task is not None and not self._run_task.done() and self.counters.in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                clean = False
        self._stopping = True
        for state in self._scheduler.drain():
            self._fail(state, "shutdown", "never started before shutdown", answer=False)
        for name, parked in self._parked.items():
            while parked:
                self.counters.listener(name).waiting -= 1
                self._fail(parked.popleft(), "shutdown", "never started before shutdown", answer=False)
        await self._cancel_handlers()
        self._work.set()
        if self._run_task is not None and not self._run_task.done() and self._run_task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(self._run_task), 5.0)
            except TimeoutError:
                self._run_task.cancel()
        report = ShutdownReport(
            handled=self.counters.handled,
            errored=self.counters.errored_total,
            dropped=self.counters.errored["shutdown"] - dropped_before,
            clean=clean,
        )
        log.info("shutdown %s", report)
        return report

    async def _cancel_handlers(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ introspection
    async def idle(self) -> None:
        """Wait until nothing is in flight (every accepted unit has ended)."""
        if self.counters.in_flight:
            await self._idle.wait()

    def status(self) -> dict:
        """Counters, queue depths and open conversations (for `status`)."""
        snapshot = self.counters.snapshot()
        snapshot.update(
            organism=self.config.name,
            queued=len(self._scheduler),
            queued_intake=self._scheduler.intake_size,
            threads=len(self.threads),
            conversations=self.threads.conversations,
            context_threads=len(self.context),
            todos=len(self.todos),
            dead_letters=self.dead_letters.total,
            clients=sorted(self._mailboxes),
            open_conversations=[
                {"id": c.id, "client": c.client, "external_thread": c.external_id, "pending": c.pending, "hops": c.hops}
                for c in self.threads.open_conversations()[:50]
            ],
        )
        return snapshot


def _canonical(root: etree._Element | None) -> bytes:
    return etree.tostring(root, method="c14n", exclusive=True) if root is not None else b""
