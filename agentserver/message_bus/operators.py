"""Pipeline stages: a step applied to a batch of states.

The pipeline moves *batches*: whatever the scheduler has ready (up to the admission
room) goes through the stages together, so aiostream's per-item cost (about 1.4 µs per
stage) is paid once per batch; an idle pump still moves a batch of one at once. Steps
stay functions of one `MessageState`.

- `each.pipe(step, ctx)` yields, for a batch, `[step(state, ctx) for state in batch]`;
- `fan_out.pipe(step, ctx, on_extra)` yields every state of every list `step` returns
  (1..n per input), calling `on_extra` for each state beyond the first so the pump can
  count it as a unit of its own.

Both are aiostream operators of one generator layer each: `pipe.map` stacks two (it
zips its single source), measured here at 1.9 µs per stage against 0.7 µs; and no task
is created per item (aiostream's `flatmap` runs each sub-sequence in a task of its own,
measured at ~92 µs per item).
"""

from __future__ import annotations

from typing import AsyncIterable, AsyncIterator, Callable

from aiostream.core import pipable_operator, streamcontext

from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext

__all__ = ["each", "fan_out"]

Batch = list[MessageState]


@pipable_operator
async def each(
    source: AsyncIterable[Batch], step: Callable[[MessageState, PipelineContext], MessageState], ctx: PipelineContext
) -> AsyncIterator[Batch]:
    """For each batch, yield `[step(state, ctx) for state in batch]`."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield [step(state, ctx) for state in batch]


@pipable_operator
async def fan_out(
    source: AsyncIterable[Batch],
    step: Callable[[MessageState, PipelineContext], list[MessageState]],
    ctx: PipelineContext,
    on_extra: Callable[[MessageState], None],
) -> AsyncIterator[Batch]:
    """For each batch, yield every state of every list `step` returns (1..n per state)."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            out: Batch = []
            for state in batch:
                produced = step(state, ctx)
                out.extend(produced)
                for extra in produced[1:]:
                    on_extra(extra)
            yield out
