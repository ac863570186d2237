"""Calling one handler: what it is told, its deadline, and what its return value becomes.

`call_handler` runs a listener's handler on one delivered message and gives back
either the units its return value becomes (its todo operations are applied to the
thread's watchers on the way) or the `StepError` that ends the unit:

- `timeout`: it ran over `handler_timeout_s` (the pump's shared `Deadlines` timer
  cancelled it; any other cancellation, such as shutdown, propagates);
- `wrong-type`: it returned something it may not return;
- `handler`: it raised (the exception rides along, logged with its traceback);
- an LLM error it let through (`meta.llm`): its own code (`budget`, `llm-error`,
  `llm-unavailable`, `llm-too-large`).

`metadata_for` is the `HandlerMetadata` of a delivery. `HandlerTasks` holds the
running handlers: one task each in a task group that `run()` enters (`async with
pump.handlers`), with the unit it handles, so the pump can cancel a conversation's
handlers, or all of them, in one place; with them, the handlers' shared deadline
timer, the loop-lag watchdog (watchdog.py) that names a handler blocking the loop,
and the organism's model router (agentserver.llm), which `meta.llm` uses and which
is closed with them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from typing import TYPE_CHECKING, Any, Callable, Coroutine, cast

from agentserver.codes import ErrorCode
from agentserver.message_bus.deadlines import Deadlines
from agentserver.message_bus.message_state import Delivery, HandlerMetadata, MessageState, StepError
from agentserver.message_bus.outcomes import HANDLER_STEP
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.responses import WrongType, build_responses
from agentserver.message_bus.stores import Stores

from agentserver.message_bus.watchdog import LoopWatchdog
from agentserver.outbound import Outbound

if TYPE_CHECKING:  # pragma: no cover
    from agentserver.config import OrganismConfig
    from agentserver.limits import Limits
    from agentserver.message_bus.listeners import Listener
    from agentserver.message_bus.calls import CallDesk
    from agentserver.message_bus.listeners import Routes
    from agentserver.message_bus.thread_registry import Conversation

__all__ = ["call_handler", "metadata_for", "HandlerTasks", "HandlerFailed", "llm_code"]


class HandlerFailed(Exception):
    """A handler that ran elsewhere (another member, DESIGN.md §15) ended in `code`."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def metadata_for(state: MessageState, route: Delivery, stores: Stores, desk: "CallDesk", llm: Any = None) -> HandlerMetadata:
    """The metadata of `state` delivered along `route`: its thread, who sent it, and for
    agents their name, usage instructions and raised todos; the thread's history; the
    conversation's id as its client knows it; and `ask`, bound to this delivery."""
    listener, thread = route.listener, route.thread
    return HandlerMetadata(
        thread_id=thread.id,
        from_id=state.sender,
        own_name=listener.name if listener.agent else None,
        is_self_call=state.sender == listener.name,
        usage_instructions=listener.usage_instructions,
        todo_nudge=stores.todos.nudge_for(thread.id, listener.name) if listener.agent else "",
        history=stores.history.history(thread.id),
        conversation_id=thread.conversation.external_id or "",
        message_id=state.message_id,
        redelivered=state.redelivered,
        call_id=thread.call_id or "",
        _ask=functools.partial(desk.ask, state, route),
        _llm=functools.partial(ask_model, llm, listener, thread.conversation),
        stream=_stream_sink(route),
    )


def _stream_sink(route: Delivery) -> Callable[[str], None] | None:
    """Where this handler's text streams: to the client at the root, if this handler
    answers it directly and it asked to see the answer stream."""
    thread = route.thread
    conversation = thread.conversation
    session, external_id = conversation.session, conversation.external_id
    if session is None or external_id is None or external_id not in session.streaming or thread.parent is not conversation.root:
        return None
    sender = route.listener.name
    return lambda text: None if session.deliver(Outbound.stream(external_id, sender, text)) else None


async def ask_model(router: Any, listener: "Listener", conversation: "Conversation", messages: Any, **options: Any) -> Any:
    """`meta.llm`: the router, with this listener's `llm:` defaults and budgets, on the
    conversation's budget account."""
    if router is None:
        from agentserver.llm.types import LlmConfigError

        raise LlmConfigError("meta.llm: this organism has no llm: section (model backends) in its configuration")
    settings = listener.llm
    if settings is not None:
        for key in ("model", "max_tokens", "temperature"):
            options.setdefault(key, getattr(settings, key))
        options.setdefault("budget", settings.budget)
    return await router.complete(messages, agent=listener.name, conversation=str(conversation.id), **options)


async def call_handler(state: MessageState, route: Delivery, stores: Stores, ctx: PipelineContext,
                       runtime: "HandlerTasks", desk: "CallDesk", stopping: bool) -> list[MessageState] | StepError:
    """Run the handler of `route` on `state` under its deadline (see the module docstring).

    Not at all if its conversation was ended, or the pump is `stopping`, since its task
    was made: the unit ends with that code (a task cancelled before it began could not)."""
    listener = route.listener
    stop = route.thread.conversation.ended or (ErrorCode.SHUTDOWN if stopping else None)
    if stop is not None:
        return StepError(stop, f"{listener.name} not called: {stop}", HANDLER_STEP)
    task = asyncio.current_task()
    assert task is not None
    deadlines = runtime.deadlines
    key = deadlines.watch(task)
    try:
        result = await runtime.invoke(listener, state, metadata_for(state, route, stores, desk, runtime.llm))
        responses = build_responses(result, sender=listener.name, thread=route.thread, ctx=ctx)
    except asyncio.CancelledError:
        if not deadlines.claim(task):
            raise
        task.uncancel()
        return StepError(ErrorCode.TIMEOUT, f"{listener.name} ran over {deadlines.timeout}s", HANDLER_STEP)
    except WrongType as exc:
        return StepError(ErrorCode.WRONG_TYPE, f"{listener.name}: {exc}", HANDLER_STEP)
    except HandlerFailed as exc:
        known = exc.code in ErrorCode._value2member_map_
        return StepError(ErrorCode(exc.code) if known else ErrorCode.HANDLER, exc.reason, HANDLER_STEP)
    except Exception as exc:
        code = llm_code(exc)
        if code is not None:
            return StepError(code, f"{listener.name}: {type(exc).__name__}: {exc}", HANDLER_STEP)
        return StepError(ErrorCode.HANDLER, f"{listener.name} raised {type(exc).__name__}: {exc}", HANDLER_STEP, exc)
    finally:
        deadlines.unwatch(task, key)
    for todo in responses.todos:
        stores.apply_todo(route.thread, todo, listener.name)
    return responses.states


def llm_code(exc: Exception) -> ErrorCode | None:
    """The code of an LLM error (agentserver.llm is imported only by organisms using it)."""
    types = sys.modules.get("agentserver.llm.types")
    if types is None or not isinstance(exc, types.LlmError):
        return None
    try:
        return ErrorCode(exc.code)
    except ValueError:
        return ErrorCode.LLM_ERROR


class HandlerTasks:
    """The running handler tasks and their units, in a task group entered by `run()`;
    the model router handlers use (None: the organism has no `llm:`)."""

    def __init__(self, limits: "Limits", routes: "Routes", llm: Any = None, transport: Any = None) -> None:
        self.llm = llm
        self.transport = transport  # agentserver.transport.Member: handlers run on any member (DESIGN.md §15)
        self.deadlines = Deadlines(limits.handler_timeout_s)  # one timer for every running handler
        self.watchdog = LoopWatchdog(limits.loop_lag_warning_s, {
            listener.handler.__code__: name for name, listener in routes.by_name.items() if hasattr(listener.handler, "__code__")})
        self.group: asyncio.TaskGroup | None = None  # set while run() runs
        self._running: dict[asyncio.Task[None], MessageState] = {}

    async def __aenter__(self) -> "HandlerTasks":
        if self.group is not None:
            raise RuntimeError("this pump is already running, or has run")
        self.group = asyncio.TaskGroup()
        await self.group.__aenter__()
        self.watchdog.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.watchdog.stop()
        self.deadlines.close()
        assert self.group is not None
        try:
            await self.group.__aexit__(*exc_info)
        finally:
            if self.llm is not None:
                await self.llm.aclose()

    async def invoke(self, listener: "Listener", state: MessageState, meta: HandlerMetadata) -> Any:
        """Call `listener`'s handler: here, or with a transport on whichever member takes
        it (the pump's own listeners always run here)."""
        if self.transport is not None and not listener.system:
            return await self.transport.invoke(listener, state, meta)
        return await listener.handler(state.payload, meta)

    @classmethod
    def for_organism(cls, config: "OrganismConfig", routes: "Routes", transport: Any = None) -> "HandlerTasks":
        llm = None
        if config.llm is not None:
            from agentserver.llm.router import LlmRouter

            llm = LlmRouter(config.llm, env=config.env)
        routes.bind_llm(llm)  # LLM agents count their re-asks there
        return cls(config.limits, routes, llm, transport)

    def forget(self, conversation: "Conversation") -> None:
        """The conversation is over: its token ledger goes."""
        if self.llm is not None:
            self.llm.forget_conversation(str(conversation.id))

    def __len__(self) -> int:
        return len(self._running)

    def start(self, state: MessageState, handling: Coroutine[None, None, None], name: str) -> None:
        assert self.group is not None, "handlers start only while the pump runs"
        task = self.group.create_task(handling, name=name)
        self._running[task] = state

    def ended(self, task: "asyncio.Task[None] | None") -> None:
        """The handling task is ending (its last step): it is no longer running."""
        self._running.pop(task, None)  # type: ignore[arg-type]

    def lost(self) -> list[MessageState]:
        """Units whose task ended without running (cancelled before it began, when run()
        itself was cancelled): nobody else will end them."""
        lost = [state for task, state in self._running.items() if task.done() and not state.settled]
        self._running = {task: state for task, state in self._running.items() if not task.done()}
        return lost

    def running_units(self) -> list[MessageState]:
        return list(self._running.values())

    def cancel(self, conversation: "Conversation | None" = None) -> None:
        """Cancel the handlers of `conversation`, or all (never the calling task itself).

        A task that has not begun is left to begin: a cancelled task that never ran would
        never end its unit. Its handling sees the conversation ended (or the pump
        stopping) before it calls the handler, and ends the unit itself."""
        current = asyncio.current_task()
        for task, state in self._running.items():
            if (conversation is None or state.conversation is conversation) and task is not current \
                    and inspect.getcoroutinestate(cast(Coroutine[Any, Any, None], task.get_coro())) != inspect.CORO_CREATED:
                task.cancel()

    async def wait(self, timeout: float) -> list[MessageState]:
        """Wait up to `timeout` for the handlers to end; the units of those still running
        (they ignored their cancellation) are returned."""
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout)
        return [state for task, state in self._running.items() if not task.done()]
