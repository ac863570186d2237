"""StreamPump: the path of a message, top to bottom.

    inject() ──► Admission: bounded intake, fair queue ──► pipeline (8 steps) ──► _dispatch()
                      ▲                                                              │
                      │                          a reply (ToClient) ──► its client's session
                      │                          a delivery ──► HandlerSlots ──► _handle()
                      └──── push(): handler output, system messages ◄───────────────┘

1. `inject` (external senders) waits for a place in the bounded intake; `push`
   (handler output) never waits. Both queue units fairly (flow.py).
2. `run` drives the pipeline (pipeline.py) over the batches Admission hands out.
3. `_dispatch` ends errored units, hands replies to the client's session, resumes the
   handler awaiting an answer (calls.py), or starts a delivery's handler or parks it.
4. `_handle` calls the handler (handler_call.py) and sends its output to step 1.
5. Every unit ends exactly once: `_settle` or `_fail` (outcomes.py tells whoever
   should hear); with a journal it was written at `_accept` and is marked done at `_end`.

Use it as `async with StreamPump(config) as pump:`; leaving the block shuts it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any, Callable

from agentserver.codes import ErrorCode
from agentserver.config import OrganismConfig
from agentserver.journal import Journal
from agentserver.limits import is_reserved
from agentserver.message_bus.boot import boot_message, organism_routes
from agentserver.message_bus.calls import CallDesk, Calls
from agentserver.message_bus.conversations import ConversationGuard
from agentserver.message_bus.counters import Counters
from agentserver.message_bus.dead_letters import DeadLetters
from agentserver.message_bus.durability import durability_for
from agentserver.message_bus.events import Events
from agentserver.message_bus.flow import Admission, HandlerSlots, PumpClosed
from agentserver.message_bus.handler_call import HandlerTasks, call_handler
from agentserver.message_bus.local_client import LocalClient
from agentserver.message_bus.mailboxes import Mailboxes, Session, acknowledge
from agentserver.message_bus.message_state import Delivery, FrameAck, HistoryEntry, MessageState, Origin, StepError, ToClient
from agentserver.message_bus.outcomes import Reporter, ShutdownReport
from agentserver.message_bus.pipeline import Pipeline
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.responses import deliver_reply
from agentserver.message_bus.status import pump_status
from agentserver.message_bus.stores import Stores

__all__ = ["StreamPump", "PumpClosed", "ShutdownReport"]

log = logging.getLogger("agentserver.pump")

SLICE_S = 0.001  # the dispatch loop gives the event loop back at least this often, so started handlers run
GRACE_S = 2.0  # after the deadline: how long cancelled handlers and the pipeline get to finish


class StreamPump:
    def __init__(self, config: OrganismConfig, *, stores: Stores | None = None,
                 clock: Callable[[], float] = time.monotonic, transport: Any = None) -> None:
        self.config = config
        limits = config.limits
        self.counters = Counters()
        journal = Journal(config.journal, config.name) if config.journal else getattr(transport, "journal", None)  # JournalError
        self.stores = stores or Stores.in_memory(limits, journal)
        self.dead_letters = DeadLetters(limits.dead_letters)
        self.routes = organism_routes(config)
        self.ctx = PipelineContext.build(limits, self.routes, self.stores.threads, clock)
        self.pipeline = Pipeline(self.ctx, on_extra=self._accept)
        depth_first = config.thread_scheduling == "depth-first"
        self.admission = Admission(limits.intake_capacity, config.max_concurrent_pipelines, depth_first)
        self.slots = HandlerSlots(config.max_concurrent_handlers, self.routes, self.counters, depth_first, bool(transport))
        self.handlers = HandlerTasks.for_organism(config, self.routes, transport)  # the model router too
        self.mailboxes = Mailboxes(forbidden=lambda name: name in self.routes.by_name or is_reserved(name))
        self.calls = Calls()  # awaited calls (meta.ask)
        self.durability = durability_for(journal, self.ctx, self.stores, self.calls, transport)
        self.desk = CallDesk(self.ctx, self.calls, self.slots, push=self.push, start=self._start)
        self.reporter = Reporter(self.ctx, self.counters, self.dead_letters, self.calls, push=self.push,
                                 defer_shutdown=self.durability.deferring)
        self._acknowledge = functools.partial(acknowledge, dedupe=self.ctx.dedupe, when_durable=self.durability.when_durable)
        self.events = Events()
        self.started = time.time()
        self.guard = ConversationGuard(limits, self.stores, self.reporter, self.slots, self.handlers, self._fail,
                                       clock=lambda: self.ctx.clock())
        self._idle = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._report: ShutdownReport | None = None
        self.push(boot_message(self.ctx, self.stores.threads, config.name))

    async def __aenter__(self) -> "StreamPump":
        self._run_task = asyncio.create_task(self.run(), name=f"pump:{self.config.name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ 1. intake
    async def inject(self, raw: bytes, *, session: Session | None = None, from_id: str | None = None,
                     thread_id: str | None = None, seq: int | None = None) -> None:
        """Queue one envelope from `session` (or the one attached as `from_id`), waiting while the intake is
        full; `seq`: its number on the connection (one ack or one `<huh>`); `thread_id`: the `<huh>`'s fallback."""
        session = session or self.mailboxes.named(from_id)
        name = session.name if session is not None else from_id
        await self.admission.enter_intake(session or name)
        state = MessageState(raw=bytes(raw), origin=Origin.external(name), session=session, thread_hint=thread_id,
                             ack=FrameAck(seq) if seq is not None else None)
        self._accept(state)
        self.admission.push(state, session or name, intake=True)

    def push(self, state: MessageState) -> None:
        """Queue a unit the pump built (handler output, system messages). Never waits, but
        a conversation over its budget of units is ended here, where its output arrives."""
        state.branch = state.branch or self.calls.enclosing(state.sender_thread or state.thread)
        self._accept(state)
        if self.admission.stopping:
            self._fail(state, ErrorCode.SHUTDOWN, "sent during shutdown")
        elif (conversation := self.guard.admit(state)) is not None:  # None: over its budget, ended
            self.admission.push(state, conversation.lane, conversation.id)

    # ------------------------------------------------------------------ 2. the pipeline
    async def run(self) -> None:
        """Move messages until `shutdown()` (`async with pump:` runs this)."""
        self._run_task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        try:
            async with self.handlers:  # the handler tasks' group, their deadlines, the loop-lag watchdog
                for state in self.durability.start():  # with a journal: what was not done last time
                    self.push(state)
                self.guard.tick()  # conversation deadlines, idle conversations: once a second from now on
                async with self.pipeline.stream(self.admission.batches()).stream() as batches:
                    slice_end = loop.time() + SLICE_S
                    async for batch in batches:
                        for state in batch:
                            self._dispatch(state)
                        if loop.time() >= slice_end:  # let the handlers just started run
                            await asyncio.sleep(0)
                            slice_end = loop.time() + SLICE_S
        finally:
            self._stop()  # cancelled from outside, or a bug: still, every unit ends once

    # ------------------------------------------------------------------ 3. dispatch
    def _dispatch(self, state: MessageState) -> None:
        route = state.route
        ended = state.conversation.ended if state.conversation is not None else None
        if state.error is not None:
            self._fail(state)
        elif self.admission.stopping:
            self._fail(state, ErrorCode.SHUTDOWN, "not started before shutdown")
        elif ended is not None:
            self._fail(state, ended, f"the conversation was ended ({ended})")
        elif isinstance(route, ToClient):
            self._acknowledge(state)
            if deliver_reply(state, route):
                self._settle(state)
            else:
                self._fail(state, ErrorCode.UNDELIVERABLE, f"client {route.client!r} is gone or not reading")
        else:
            assert isinstance(route, Delivery)
            self._acknowledge(state)  # the envelope is accepted: its sender's one ack
            entry = HistoryEntry(state.sender, route.listener.name, state.root_tag, state.payload, time.time(),
                                 state.message_id, state.call_id)
            self.stores.record(route.thread, entry, self.ctx.clock(), state.payload_element)
            state.leave_pipeline()  # a parked unit must not hold back other listeners' messages
            conversation = route.thread.conversation
            answered = self.calls.answer(state, route)  # the answer to an awaited call resumes its waiter
            if answered is not None:
                self._settle(state) if answered else self._fail(state, ErrorCode.LATE, f"answer to call {state.call_id} came late")
            elif self.slots.take(route.listener.name, state, conversation.lane, conversation.id):
                self._start(state)

    def _start(self, state: MessageState) -> None:
        """Run the handler in a task of the pump's task group (a slot is taken for it)."""
        route = state.route
        assert isinstance(route, Delivery)
        state.leave_intake() if self.handlers.transport is None else None  # the caps bound it now (on NATS: the intake)
        self.counters.listener(route.listener.name).delivered += 1
        self.handlers.start(state, self._handle(state, route), name=f"handler:{route.listener.name}")

    # ------------------------------------------------------------------ 4. handlers
    async def _handle(self, state: MessageState, route: Delivery) -> None:
        listener = route.listener
        ok, started = False, time.perf_counter()
        try:
            outcome = await call_handler(state, route, self.stores, self.ctx, self.handlers, self.desk,
                                         self.admission.stopping)
            if isinstance(outcome, StepError):
                state.error = outcome
                self._fail(state)
            else:
                self.durability.handled(state, outcome)  # one transaction: this unit done, its outputs kept
                for response in outcome:
                    self.push(response)
                ok = True
                self._settle(state)
            await self.durability.settled(state)  # with a journal, the slot is held until the unit's end is on disk
        except asyncio.CancelledError:
            ended = route.thread.conversation.ended  # cancelled because its conversation ended, or by shutdown
            self._fail(state, ended or ErrorCode.SHUTDOWN, f"{listener.name} cancelled ({ended or 'shutdown'})")
            if not ended:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            self.handlers.ended(asyncio.current_task())
            self.counters.listener(listener.name).ended(ok, time.perf_counter() - started)
            for unit in self.slots.free(listener.name):  # hand the freed slots to parked units
                self._start(unit)

    # ------------------------------------------------------------------ 5. outcomes
    def _accept(self, state: MessageState) -> None:
        state.born = time.perf_counter()
        self.durability.accept(state)  # with a journal: written before it is processed
        self.counters.accepted += 1
        self._idle.clear()
        self.calls.unit_started(state)  # a unit of an awaited call's branch

    def _settle(self, state: MessageState) -> None:  # the unit ended well
        if not state.settled:
            self.counters.handled += 1
            self._end(state)

    def _fail(self, state: MessageState, code: ErrorCode | None = None, reason: str = "", step: str = "dispatch") -> None:
        """The unit ended in an error: count, log, record, and tell who should know."""
        if state.settled:
            return
        if code is not None:
            state.error = None
            state.fail(code, reason, step)
        try:
            self.reporter.report(state)
        finally:
            self._end(state)

    def _end(self, state: MessageState) -> None:
        self.calls.unit_ended(state)  # the last unit of an awaited call's branch, unanswered: no-answer
        self._acknowledge(state)  # an external envelope that got no <huh> is acked, whatever became of it
        self.durability.ended(state)
        self.events.unit_ended(state)  # the hop event: logs, `watch`, the live page
        finished = state.release()
        if finished is not None:
            self.events.conversation_ended(finished, self.ctx.clock())
            self.stores.forget(finished)
            self.handlers.forget(finished)
        if self.counters.in_flight == 0:
            self._idle.set()
        self.stores.sweep(self.ctx.clock())  # also on the tick: idle conversations go with or without traffic

    def client(self, name: str, **options: Any) -> LocalClient:
        return LocalClient(self, name, **options)  # in-process: `async with pump.client("me") as client: ...`

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Stop intake, let in-flight work finish within `timeout`, cancel the rest: every
        accepted unit has ended when this returns (within `timeout` plus a few seconds)."""
        if self._report is not None:
            return self._report
        self.admission.closing = True
        running = self._run_task is not None and not self._run_task.done()
        if running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle(), self.config.limits.shutdown_timeout_s if timeout is None else timeout)
        clean = not self.counters.in_flight
        dropped_before = self.counters.errored[ErrorCode.SHUTDOWN]
        self._stop()
        for state in await self.handlers.wait(GRACE_S):  # these ignored their cancellation
            self._fail(state, ErrorCode.SHUTDOWN, "its handler ignored its cancellation at shutdown")
        if running and self._run_task is not None and self._run_task is not asyncio.current_task():
            await asyncio.wait([self._run_task], timeout=GRACE_S)
        await self.durability.close()
        self._report = ShutdownReport.of(self.counters, dropped_before, clean)
        log.info("shutdown %s", self._report)
        return self._report

    def _stop(self) -> None:
        """Nothing more starts: end what waits, cancel what runs (the one place that does)."""
        self.admission.closing = self.admission.stopping = True
        self.guard.stop()
        for state in self.admission.drain() + self.slots.drain() + self.handlers.lost():
            self._fail(state, ErrorCode.SHUTDOWN, "never started before shutdown")
        self.handlers.cancel()
        self.admission.wake()

    # ------------------------------------------------------------------ introspection
    @property
    def closed(self) -> bool:
        return self.admission.closing  # shutdown() has begun: no new messages are taken

    @property
    def task(self) -> "asyncio.Task[None] | None":
        return self._run_task  # the task running run(): it ends after shutdown(), or if the pump fails

    async def idle(self) -> None:  # until nothing is in flight (every accepted unit has ended; with a journal, on disk)
        if self.counters.in_flight:
            await self._idle.wait()
        await self.durability.settled()

    def status(self) -> dict[str, Any]:
        return pump_status(self)  # counters, queue depths and open conversations
