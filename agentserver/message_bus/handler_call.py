"""Calling one handler: what it is told, its deadline, and what its return value becomes.

`call_handler` runs a listener's handler on one delivered message and gives back
either the `Responses` its return value becomes (new units and todo operations) or
the `StepError` that ends the unit:

- `timeout`: it ran over `handler_timeout_s` (the pump's shared `Deadlines` timer
  cancelled it; any other cancellation, such as shutdown, propagates);
- `wrong-type`: it returned something it may not return;
- `handler`: it raised (the exception rides along, logged with its traceback).

`metadata_for` is the `HandlerMetadata` of a delivery.
"""

from __future__ import annotations

import asyncio

from agentserver.codes import ErrorCode
from agentserver.message_bus.deadlines import Deadlines
from agentserver.message_bus.message_state import Delivery, HandlerMetadata, MessageState, StepError
from agentserver.message_bus.outcomes import HANDLER_STEP
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.responses import Responses, WrongType, build_responses
from agentserver.message_bus.stores import Stores

__all__ = ["call_handler", "metadata_for"]


def metadata_for(state: MessageState, route: Delivery, stores: Stores) -> HandlerMetadata:
    """The metadata of `state` delivered along `route`: its thread, who sent it, and for
    agents their name, usage instructions and raised todos; the thread's history."""
    listener, thread = route.listener, route.thread
    return HandlerMetadata(
        thread_id=thread.id,
        from_id=state.sender,
        own_name=listener.name if listener.agent else None,
        is_self_call=state.sender == listener.name,
        usage_instructions=listener.usage_instructions,
        todo_nudge=stores.todos.nudge_for(thread.id, listener.name) if listener.agent else "",
        history=stores.history.history(thread.id),
    )


async def call_handler(state: MessageState, route: Delivery, stores: Stores, ctx: PipelineContext,
                       deadlines: Deadlines) -> Responses | StepError:
    """Run the handler of `route` on `state` under its deadline (see the module docstring)."""
    listener = route.listener
    task = asyncio.current_task()
    assert task is not None
    key = deadlines.watch(task)
    try:
        result = await listener.handler(state.payload, metadata_for(state, route, stores))
        return build_responses(result, sender=listener.name, thread=route.thread, ctx=ctx)
    except asyncio.CancelledError:
        if not deadlines.claim(task):
            raise
        task.uncancel()
        return StepError(ErrorCode.TIMEOUT, f"{listener.name} ran over {deadlines.timeout}s", HANDLER_STEP)
    except WrongType as exc:
        return StepError(ErrorCode.WRONG_TYPE, f"{listener.name}: {exc}", HANDLER_STEP)
    except Exception as exc:
        return StepError(ErrorCode.HANDLER, f"{listener.name} raised {type(exc).__name__}: {exc}", HANDLER_STEP, exc)
    finally:
        deadlines.unwatch(task, key)
