"""The pipeline: the eight steps in their order, built once, run by the pump and the tests.

    repair → c14n → envelope validation → payload extraction (fan-out) →
    thread assignment → XSD validation → deserialization → routing (fan-out)

`STAGES` is the only place the order is written. A `Pipeline` binds it to one pump's
`PipelineContext`:

- `stream(batches)` is the aiostream composition the pump iterates: batches in,
  batches of routed (or errored) states out;
- `feed(states, upto=...)` runs the same stages synchronously over one batch, which is
  how the step tests drive it (bytes in, states out, no pump running).
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Callable

from aiostream import stream

from agentserver.message_bus.message_state import MessageState
from agentserver.message_bus.operators import Stage, apply_stage, each, fan_out
from agentserver.message_bus.pipeline_context import PipelineContext
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

__all__ = ["STAGES", "Pipeline"]

STAGES: tuple[Stage, ...] = (
    Stage("repair", repair),
    Stage("c14n", canonicalize),
    Stage("envelope", validate_envelope),
    Stage("extraction", extract_payloads, fans_out=True),
    Stage("threads", assign_thread),
    Stage("xsd", validate_payload),
    Stage("deserialize", deserialize),
    Stage("routing", route, fans_out=True),
)


class Pipeline:
    def __init__(self, ctx: PipelineContext, on_extra: Callable[[MessageState], None] | None = None) -> None:
        self.ctx = ctx
        self.stages = STAGES
        self.on_extra = on_extra or (lambda state: None)  # fan-out copies: the pump counts them

    def stream(self, batches: AsyncIterable[list[MessageState]]) -> Any:
        """The aiostream composition over `batches` (use: `async with pipeline.stream(b).stream() as s`)."""
        composed: Any = stream.iterate(batches)
        for stage in self.stages:
            composed = composed | (fan_out.pipe(stage, self.ctx, self.on_extra) if stage.fans_out else each.pipe(stage, self.ctx))
        return composed

    def feed(self, states: list[MessageState], *, upto: str | Callable[..., Any] | None = None) -> list[MessageState]:
        """Run the stages over one batch, up to and including the stage `upto` (a name or a step)."""
        for stage in self.stages:
            states = apply_stage(stage, states, self.ctx, self.on_extra)
            if upto is not None and (stage.name == upto or stage.step is upto):
                break
        return states
