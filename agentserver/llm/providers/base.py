"""What every provider takes and gives, and how a failed attempt is described.

- `ChatRequest`: one request as a provider sees it (the model already chosen);
- `Provider`: `complete(request, on_token=...) -> Completion` and `aclose()`;
- `BackendFailure`: an attempt failed; carries what the router needs to decide what
  next (`kind`, HTTP `status`, `retry_after` seconds) and a reason safe to log;
- `classify_status`, `parse_retry_after`: the pure rules behind that decision.

Which HTTP statuses are whose fault (the router acts on `FailureKind`):

| status                 | kind      | what the router does                                       |
| ---------------------- | --------- | ---------------------------------------------------------- |
| 400, 422 (and 413)     | `REQUEST` | raise `LlmRequestError` at once: the request is at fault    |
| 401, 403, 404          | `BACKEND` | no retry here; try another eligible backend, else raise     |
| 408, 409, 429, 5xx     | `TRANSIENT` | cool the backend down, retry (honouring `Retry-After`)   |
| connection, timeout, malformed answer | `TRANSIENT` | the same                             |
| any other 4xx          | `REQUEST` | as 400                                                      |
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Protocol

from agentserver.llm.types import Completion, Message

__all__ = [
    "ChatRequest",
    "Provider",
    "TokenCallback",
    "FailureKind",
    "BackendFailure",
    "classify_status",
    "parse_retry_after",
    "redact",
]

TokenCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One request for a provider: the turns, and the options it should honour."""

    messages: tuple[Message, ...]
    model: str | None  # None: the backend names no model and the request gave none
    max_tokens: int
    temperature: float | None = None
    grammar: str | None = None  # GBNF; given only to backends that accept one


class Provider(Protocol):
    """A way to reach one backend."""

    async def complete(self, request: ChatRequest, *, on_token: TokenCallback | None = None) -> Completion:
        """Answer `request`; with `on_token`, stream, calling it with each piece of text
        as it arrives. Raises `BackendFailure` for anything the router may act on."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...


class FailureKind(enum.Enum):
    TRANSIENT = "transient"  # retry, maybe elsewhere, after a pause
    BACKEND = "backend"  # this backend will not serve this request; another may
    REQUEST = "request"  # the request itself is refused; no backend will take it


class BackendFailure(Exception):
    """One attempt failed. `reason` is short and safe to log (no key, no prompt)."""

    def __init__(self, reason: str, *, kind: FailureKind, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.retry_after = retry_after  # seconds the backend asked us to wait, if it did


def classify_status(status: int) -> FailureKind:
    """Whose fault an HTTP error status is (see the table in the module docstring)."""
    if status in (408, 409, 429) or status >= 500:
        return FailureKind.TRANSIENT
    if status in (401, 403, 404):
        return FailureKind.BACKEND
    return FailureKind.REQUEST


def parse_retry_after(value: str | None, *, now: Callable[[], float]) -> float | None:
    """Seconds to wait from a `Retry-After` header: delay-seconds (`"3"`, `"1.5"`) or
    an HTTP date (`"Wed, 21 Oct 2015 07:28:00 GMT"`, measured against the wall clock
    `now()`). None for a missing, infinite or unparseable value, which then
    simply does not count: it never changes how the failure is classified."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now())


def redact(text: str, secret: str | None, *, limit: int = 300) -> str:
    """`text` (from a server) cut to `limit` characters, with `secret` blanked out and
    control characters replaced, fit for an error message or a log line."""
    if secret:
        text = text.replace(secret, "***")
    text = "".join(c if c.isprintable() else " " for c in text)
    if len(text) > limit:
        text = text[:limit] + "…"
    return text
