"""The vocabulary of model access: messages, usage, completions, and the errors callers see.

- `Message`: one chat turn, `{"role": "system" | "user" | "assistant", "content": str}`;
- `Usage`: tokens a request spent (prompt and completion), as the backend counted them
  (or estimated at four characters a token where a backend does not count);
- `Completion`: the text a model answered, its usage, and which backend and model
  produced it;
- `LlmError` and its subclasses, each with a stable `code` (the `SystemError` code a
  caller of an LLM agent hears). Their messages name backends and reasons, never API
  keys or prompt text.

Imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

__all__ = [
    "Role",
    "Message",
    "Usage",
    "Completion",
    "LlmError",
    "BudgetExceeded",
    "RequestTooLarge",
    "LlmUnavailable",
    "LlmRequestError",
    "LlmConfigError",
    "LlmInvalid",
    "estimate_tokens",
    "CHARS_PER_TOKEN",
    "ROLES",
]

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})
CHARS_PER_TOKEN = 4  # the estimate used before a request (budgets, token buckets) and by `replay`


class Message(TypedDict):
    """One chat turn."""

    role: Role
    content: str


def estimate_tokens(text: str) -> int:
    """Tokens `text` is taken to cost before a backend has counted: one per four
    characters, rounded up. English prose runs at about four characters a token for
    the common tokenizers; XML with short tags runs a little denser, so budgets
    checked with this estimate should keep some headroom."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one request spent."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's answer: the whole text, what it cost, and who produced it."""

    text: str
    usage: Usage
    backend: str
    model: str


class LlmError(Exception):
    """Model access failed; `code` says how (a stable string, also used as the
    `SystemError` code a caller hears)."""

    code: str = "llm-error"


class BudgetExceeded(LlmError):
    """A token budget (per conversation or per agent) would be exceeded by this
    request; nothing was sent."""

    code = "budget"


class RequestTooLarge(LlmError):
    """The request alone is larger than every eligible backend's token bucket, so it
    could never be sent; refused at once, without waiting."""

    code = "llm-too-large"


class LlmUnavailable(LlmError):
    """No answer: every eligible backend failed, is cooling down, or the attempts ran
    out. The message names the backends and why."""

    code = "llm-unavailable"


class LlmRequestError(LlmError):
    """A backend refused the request itself (HTTP 400, 401, 403, 404, 422): retrying
    the same request cannot help. The message names the backend and the status."""

    code = "llm-error"


class LlmConfigError(LlmError):
    """The `llm:` configuration cannot be put to use (a provider's optional package is
    missing, a key variable vanished since the config was checked)."""

    code = "llm-config"


class LlmInvalid(LlmError):
    """An LLM agent's model gave no usable answer: every answer of a turn was unusable
    (malformed XML, an unknown root tag, invalid against its schema, unreadable into
    its class, addressed to a listener that is not a peer, or no element at all) after
    `max_reasks` re-asks, or the agent's model calls per handler call ran out. The
    message says what the last answer did wrong (for the log, never for the caller)."""

    code = "llm-invalid"
