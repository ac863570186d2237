"""A hand-written handler that thinks with `meta.llm` (no `from __future__`: xmlable)."""

from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse
from tests.organisms import PROBE


@xmlify
@dataclass
class Question:
    text: str


@xmlify
@dataclass
class Answer:
    text: str
    tokens: int
    backend: str


async def thinker(payload: Question, meta: HandlerMetadata) -> HandlerResponse:
    """Asks the organism's model, answers with what it said (and what it cost)."""
    pieces: list[str] = []
    completion = await meta.llm([{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": payload.text}],
                                on_token=pieces.append if PROBE.notes.get("stream") else None)
    PROBE.notes["pieces"] = pieces
    return HandlerResponse.respond(Answer(text=completion.text, tokens=completion.usage.total, backend=completion.backend))
