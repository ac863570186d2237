"""The LLM-agent organism (config/llm-organism.yaml): a planner with no Python of its
own, served by the pump's agent loop, that calls a calculator and answers a Summary.

    client --Task--> planner --Add--> calculator
    client <--Summary-- planner <--Sum-- calculator

`ask --to planner '<Task><Text>What is 2 + 3?</Text></Task>'` answers
`<Summary><Text>2 + 3 = 5</Text><Total>5</Total></Summary>` (with the replay provider
of the YAML, offline; a real model writes its own text).

No `from __future__ import annotations` here: xmlable needs real annotations.
"""

from dataclasses import dataclass

from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse


@xmlify
@dataclass
class Task:
    """What the planner is asked to do, in words."""

    text: str


@xmlify
@dataclass
class Add:
    """Two whole numbers for the calculator to add."""

    a: int
    b: int


@xmlify
@dataclass
class Sum:
    """The calculator's answer."""

    value: int


@xmlify
@dataclass
class Summary:
    """The planner's answer: what it found, and the total."""

    text: str
    total: int


async def calculator(payload: Add, meta: HandlerMetadata) -> HandlerResponse:
    """Adds the two numbers and answers with their Sum."""
    return HandlerResponse.respond(Sum(value=payload.a + payload.b))
