"""What the `llm:` sections of organism.yaml say, as frozen dataclasses.

`agentserver.llm.config` builds these from YAML (with `FILE:LINE` errors); the router
and providers only read them. No YAML here, and no secrets: a backend names the
environment variable that holds its key (`api_key_env`), never the key itself, so
these objects are safe to print and log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agentserver.llm.budget import BudgetPolicy

__all__ = [
    "PROVIDERS",
    "STRATEGIES",
    "Strategy",
    "ReplayAnswer",
    "BackendConfig",
    "LlmConfig",
    "AgentLlmConfig",
    "DEFAULT_MAX_TOKENS",
]

PROVIDERS = ("openai", "anthropic", "replay", "llama-cpp")
STRATEGIES = ("failover", "round-robin", "least-loaded")
Strategy = Literal["failover", "round-robin", "least-loaded"]
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    """One scripted answer of the `replay` provider: `text`, given when `when` occurs in
    the last user message (or, without `when`, in turn with the other plain answers)."""

    text: str
    when: str | None = None


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One entry of `llm.backends`."""

    name: str
    provider: str  # one of PROVIDERS
    base_url: str | None = None
    api_key_env: str | None = None
    models: tuple[str, ...] = ()  # empty: serves any model
    max_concurrent: int = 8
    rate_limit_tpm: int | None = None  # tokens per minute; None: no token bucket
    grammar: bool = False  # openai only: the server accepts a GBNF `grammar` field (llama.cpp server)
    timeout_s: float = 120.0  # the longest silence tolerated: connect, send, or wait for the next bytes
    answers: tuple[ReplayAnswer, ...] = ()  # replay only
    model_path: str | None = None  # llama-cpp only: a GGUF path, or pkg:PACKAGE/FILE.gguf
    n_ctx: int = 2048  # llama-cpp only
    n_threads: int = 2  # llama-cpp only
    line: int = 0

    def serves(self, model: str | None) -> bool:
        """Whether a request for `model` may go to this backend (None: any backend)."""
        return model is None or not self.models or model in self.models

    @property
    def default_model(self) -> str | None:
        """The model named when a request names none: the first of `models`."""
        return self.models[0] if self.models else None

    @property
    def accepts_grammar(self) -> bool:
        return self.provider == "llama-cpp" or (self.provider == "openai" and self.grammar)


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """The top-level `llm:` section: how requests are spread over the backends."""

    backends: tuple[BackendConfig, ...] = ()
    strategy: Strategy = "failover"
    retries: int = 3  # attempts after a request's first, across backends (so 4 in all)
    max_wait_s: float = 10.0  # the longest one pause between attempts may be
    max_cooldown_s: float = 60.0  # the longest a failing backend is set aside
    max_conversations: int = 100_000  # conversation ledgers kept before the oldest is dropped
    line: int = 0


@dataclass(frozen=True, slots=True)
class AgentLlmConfig:
    """A listener's `llm:` block: which model it uses, and within what limits.

    `prompt` and `reply_class` drive the built-in agent loop; a hand-written handler
    calling `meta.llm` needs only `model` and the limits."""

    model: str | None = None  # None: whatever the strategy picks, with that backend's first model
    prompt: str | None = None
    reply_class: Any = None  # an @xmlify dataclass (has `xsd` and `parse`)
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    max_reasks: int = 2
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    stream: bool = True
    line: int = 0
    model_line: int = 0
