"""Pipeline stages: a step applied to a batch of states.

The pipeline moves *batches*: whatever the scheduler has ready (up to the admission
room) goes through the stages together, so aiostream's per-item cost (about 1.4 µs per
stage) is paid once per batch; an idle pump still moves a batch of one at once. Steps
stay functions of one `MessageState`.

- `each.pipe(stage, ctx)` yields, for a batch, `[stage.step(state, ctx) for state in batch]`;
- `fan_out.pipe(stage, ctx, on_extra)` yields every state of every list the step
  returns (1..n per input), calling `on_extra` for each state beyond the first so the
  pump can count it as a unit of its own.

A step that raises is a bug in agentserver, not in the message: that state fails with
`internal` (the exception rides along, to be logged with its traceback) and the rest
of the batch carries on.

Both are aiostream operators of one generator layer each: `pipe.map` stacks two (it
zips its single source), measured here at 1.9 µs per stage against 0.7 µs; and no task
is created per item (aiostream's `flatmap` runs each sub-sequence in a task of its own,
measured at ~92 µs per item).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Callable

from aiostream.core import pipable_operator, streamcontext

from agentserver.codes import ErrorCode
from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.pipeline_context import PipelineContext

__all__ = ["Stage", "each", "fan_out", "apply_stage"]

Batch = list[MessageState]


@dataclass(frozen=True, slots=True)
class Stage:
    """One pipeline step: its name (the `step` of the errors it sets) and its function.

    A fan-out step returns a list of states (1..n per input); the others return one."""

    name: str
    step: Callable[[MessageState, PipelineContext], object]
    fans_out: bool = False


def apply_stage(stage: Stage, batch: Batch, ctx: PipelineContext, on_extra: Callable[[MessageState], None]) -> Batch:
    """`stage` over one batch: what the operators below yield, and what `Pipeline.feed` runs."""
    out: Batch = []
    step = stage.step
    if stage.fans_out:
        for state in batch:
            try:
                produced: Batch = step(state, ctx)  # type: ignore[assignment]
            except Exception as exc:
                out.append(state.fail(ErrorCode.INTERNAL, f"{stage.name} step raised {type(exc).__name__}: {exc}", stage.name, exc))
                continue
            out.extend(produced)
            for extra in produced[1:]:
                on_extra(extra)
        return out
    for state in batch:
        try:
            out.append(step(state, ctx))  # type: ignore[arg-type]
        except Exception as exc:
            out.append(state.fail(ErrorCode.INTERNAL, f"{stage.name} step raised {type(exc).__name__}: {exc}", stage.name, exc))
    return out


def _ignore(state: MessageState) -> None:
    return None


@pipable_operator
async def each(source: AsyncIterable[Batch], stage: Stage, ctx: PipelineContext) -> AsyncIterator[Batch]:
    """For each batch, yield `[stage.step(state, ctx) for state in batch]`."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield apply_stage(stage, batch, ctx, _ignore)


@pipable_operator
async def fan_out(
    source: AsyncIterable[Batch], stage: Stage, ctx: PipelineContext, on_extra: Callable[[MessageState], None]
) -> AsyncIterator[Batch]:
    """For each batch, yield every state of every list the step returns (1..n per state)."""
    async with streamcontext(source) as batches:
        async for batch in batches:
            yield apply_stage(stage, batch, ctx, on_extra)
