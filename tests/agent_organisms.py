"""Organisms and payload classes for the LLM-agent tests (tests/test_llm_agent.py,
tests/test_llm_grammar.py). No `from __future__ import annotations`: xmlable needs
real annotations.

`planner_organism(base_url, ...)` is the YAML of config/llm-organism.yaml's planner
with its model behind a fake OpenAI server, plus two listeners that are not its peers
unless asked: `greeter` (so a call to a non-peer can be tried) and `breaker` (a peer
whose handler raises, when named in `peers`).
"""

from dataclasses import dataclass
from typing import Any

import yaml
from xmlable import xmlify

from agentserver import HandlerMetadata, HandlerResponse

PLANNER_PROMPT = "You are a planner. Use the calculator for every addition, then answer with a Summary."


@xmlify
@dataclass
class Greeting:
    name: str


async def greeter(payload: Greeting, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Greeting(name=f"hello {payload.name}"))


@xmlify
@dataclass
class Breakable:
    why: str


async def breaker(payload: Breakable, meta: HandlerMetadata) -> HandlerResponse:
    raise RuntimeError(f"broken on purpose: {payload.why}")


@xmlify
@dataclass
class Inner:
    x: int
    label: str


@xmlify
@dataclass
class Every:
    """A payload with every field type the grammar supports."""

    text: str
    count: int
    ratio: float
    flag: bool
    inner: Inner
    numbers: list[int]
    names: list[str]
    inners: list[Inner]
    maybe: int | None
    either: int | str
    maybe_inner: Inner | None
    pair: tuple[int, str]
    tags: set[str]
    scores: dict[str, float]
    grid: list[list[int]]


def planner_organism(base_url: str, *, peers: tuple[str, ...] = ("calculator",), grammar: bool = False,
                     llm: dict[str, Any] | None = None, reply_class: str = "agentserver.examples.planner.Summary",
                     limits: dict[str, Any] | None = None) -> str:
    """The YAML text: `planner` (an LLM agent on the fake server at `base_url`, model
    `m`), `calculator`, `greeter` and `breaker`. `llm` adds to or overrides the
    planner's `llm:` block; `grammar` marks the backend as a llama.cpp server."""
    backend: dict[str, Any] = {"name": "fake", "provider": "openai", "base_url": base_url, "models": ["m"]}
    if grammar:
        backend["grammar"] = True
    planner_llm: dict[str, Any] = {"model": "m", "prompt": PLANNER_PROMPT, "reply_class": reply_class,
                                   "max_tokens": 64, "max_reasks": 2}
    planner_llm.update(llm or {})
    document: dict[str, Any] = {
        "organism": {"name": "llm-test"},
        "llm": {"retries": 0, "backends": [backend]},
        "listeners": [
            {"name": "planner", "payload_class": "agentserver.examples.planner.Task", "agent": True,
             "description": "Plans additions.", "peers": list(peers), "llm": planner_llm},
            {"name": "calculator", "payload_class": "agentserver.examples.planner.Add",
             "handler": "agentserver.examples.planner.calculator", "description": "Adds two numbers."},
            {"name": "greeter", "payload_class": "tests.agent_organisms.Greeting",
             "handler": "tests.agent_organisms.greeter", "description": "Greets."},
            {"name": "breaker", "payload_class": "tests.agent_organisms.Breakable",
             "handler": "tests.agent_organisms.breaker", "description": "Always fails."},
        ],
    }
    if limits:
        document["limits"] = limits
    return yaml.safe_dump(document, sort_keys=False)
