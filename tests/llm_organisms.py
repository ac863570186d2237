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


@xmlify
@dataclass
class Speak:
    words: str


async def speaker(payload: Speak, meta: HandlerMetadata) -> HandlerResponse:
    """Streams its words one by one (when its client asked), then answers them whole; asks
    the echoer first, whose meta.stream must be None (it does not answer the client)."""
    PROBE.notes["speaker_streams"] = meta.stream is not None
    await meta.ask("echoer", Speak(words="inner"))
    for word in payload.words.split():
        if meta.stream is not None:
            meta.stream(word + " ")
    return HandlerResponse.respond(Speak(words=payload.words))


async def echoer(payload: Speak, meta: HandlerMetadata) -> HandlerResponse:
    PROBE.notes["echoer_streams"] = meta.stream is not None
    return HandlerResponse.respond(payload)
