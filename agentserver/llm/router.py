"""The router: one `complete()` call in, one `Completion` out, over the configured
backends, within budgets, rate limits and a bounded number of attempts.

A request goes through these stages, in this order:

1. **Eligible backends**: those whose `models:` include the model (empty: any). None:
   `LlmRequestError`. Those whose token bucket could never hold the request (estimated
   prompt + `max_tokens` over `rate_limit_tpm`) are left out; if that leaves none,
   `RequestTooLarge` at once.
2. **Budget**: the same estimate is reserved against the agent's and the
   conversation's budgets (`budget.Ledger`); over a limit: `BudgetExceeded`, and
   nothing is sent.
3. **Attempts**: the first and at most `retries` more, across backends. Each picks a backend by
   the strategy (`failover`: the first in config order; `round-robin`: the next after
   the last one picked; `least-loaded`: the fewest requests in flight), among the
   eligible backends that are not cooling down, preferring one whose bucket can serve
   at once. If all are cooling down, it waits for the first to come back, if that is
   within `max_wait_s`; otherwise `LlmUnavailable`. The attempt takes the estimate
   from the backend's bucket (waiting in line), then one of its `max_concurrent`
   slots, then sends.
4. **Failures** (`providers.base` has the table): 400/422 raise `LlmRequestError` at
   once. 401/403/404 end this backend's part in the request: the next eligible backend
   is tried (any strategy; 401/403 also cool the backend down for `max_cooldown_s`,
   since a key does not heal by itself), and with none left `LlmRequestError` is
   raised. 408/409/429/5xx, connection errors, timeouts and malformed answers cool the
   backend down (for its `Retry-After`, else 1 s doubling with each consecutive
   failure, at most `max_cooldown_s`) and are retried: at once on another backend if
   one is ready, else after a pause of exponential backoff with jitter (0.5 s doubling,
   times 0.5-1) and no shorter than the cooldown, so `Retry-After` is honoured; a pause
   longer than `max_wait_s` is not taken: `LlmUnavailable` instead. Nothing sleeps
   after the last attempt. A failure after part of a streamed answer reached
   `on_token` is not retried (the caller already holds that part): `LlmUnavailable`.
5. **Settling**: the real usage is counted (per backend, per agent, in the budget
   ledger, and in the bucket, which gives back or charges the difference from the
   estimate). An attempt that was sent and failed keeps its estimate charged in the
   bucket (the server may have done the work); one never sent gives it all back. A
   request that fails or is cancelled after streaming part of an answer is counted
   in the budget as its estimated prompt plus the text streamed (four characters a
   token).

Cancelling the task awaiting `complete()` aborts the HTTP request (the provider's
response context closes the connection) and releases everything the request held:
its bucket place, its slot, its in-flight count, its budget reservation.

Keys are read from the `env` mapping once, when the router is made; they are never
logged, put in errors or shown in `status()`, and prompt text is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from agentserver.llm.budget import BudgetPolicy, Ledger
from agentserver.llm.bucket import TokenBucket
from agentserver.llm.providers import make_provider
from agentserver.llm.providers.base import BackendFailure, ChatRequest, FailureKind, Provider
from agentserver.llm.settings import DEFAULT_MAX_TOKENS, BackendConfig, LlmConfig
from agentserver.llm.types import (
    CHARS_PER_TOKEN,
    ROLES,
    Completion,
    LlmConfigError,
    LlmError,
    LlmRequestError,
    LlmUnavailable,
    Message,
    RequestTooLarge,
    estimate_tokens,
)

__all__ = ["LlmRouter"]

log = logging.getLogger("agentserver.llm")

BACKOFF_BASE_S = 0.5
FIRST_COOLDOWN_S = 1.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class _BackendStats:
    __slots__ = ("requests", "errors", "retries", "prompt_tokens", "completion_tokens", "in_flight", "cooldowns",
                 "last_error")

    def __init__(self) -> None:
        self.requests = 0  # attempts sent
        self.errors = 0  # attempts that failed
        self.retries = 0  # attempts sent that were not a request's first
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0  # attempts assigned here and not finished (waiting for tokens or a slot, or sent)
        self.cooldowns = 0
        self.last_error: str | None = None


class _AgentStats:
    __slots__ = ("requests", "errors", "prompt_tokens", "completion_tokens", "reasks", "budget_refusals")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasks = 0
        self.budget_refusals = 0


class _Backend:
    """One backend at run time: its provider, limits, counters and cooldown."""

    def __init__(self, index: int, config: BackendConfig, provider: Provider, *, clock: Clock, sleep: Sleep) -> None:
        self.index = index
        self.config = config
        self.name = config.name
        self.provider = provider
        self.slots = asyncio.Semaphore(config.max_concurrent)
        self.bucket = TokenBucket(config.rate_limit_tpm, clock=clock, sleep=sleep) if config.rate_limit_tpm else None
        self.stats = _BackendStats()
        self.cooldown_until: float | None = None  # on the router's clock
        self.cooldown_reason = ""
        self.consecutive_failures = 0

    def cooling(self, now: float) -> bool:
        return self.cooldown_until is not None and now < self.cooldown_until

    def fits(self, tokens: int) -> bool:
        return self.bucket is None or tokens <= self.bucket.capacity


class _Relay:
    """Passes streamed pieces to the caller's `on_token`, counting them; wraps what
    the callback raises so no provider mistakes it for a failure of its own."""

    def __init__(self, on_token: Callable[[str], None]) -> None:
        self._on_token = on_token
        self.chars = 0

    def __call__(self, piece: str) -> None:
        self.chars += len(piece)
        try:
            self._on_token(piece)
        except BaseException as exc:
            raise _CallbackFailed(exc) from exc


class _CallbackFailed(Exception):
    def __init__(self, original: BaseException) -> None:
        super().__init__("on_token raised")
        self.original = original


class LlmRouter:
    """Model access for an organism: owns one provider (and HTTP client) per backend,
    and the budgets and counters of every request. Use `async with`, or `aclose()`."""

    def __init__(self, config: LlmConfig, *, env: Mapping[str, str], clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, wall_clock: Clock = time.time, rng: random.Random | None = None) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._rng = rng if rng is not None else random.Random()
        self._ledger = Ledger(max_conversations=config.max_conversations)
        self._agents: dict[str, _AgentStats] = {}
        self._next_round_robin = 0
        self._closed = False
        keys: list[str | None] = []
        for backend in config.backends:  # every key first, so a missing one leaves nothing half made
            api_key = None
            if backend.api_key_env is not None:
                api_key = env.get(backend.api_key_env) or None
                if api_key is None:
                    raise LlmConfigError(f"backend {backend.name!r}: the environment variable "
                                         f"{backend.api_key_env} (api_key_env) is not set; put it in .env or export it")
            keys.append(api_key)
        self._backends: list[_Backend] = []
        for index, (backend, api_key) in enumerate(zip(config.backends, keys)):
            provider = make_provider(backend, api_key=api_key, wall_clock=wall_clock)
            self._backends.append(_Backend(index, backend, provider, clock=clock, sleep=sleep))

    async def __aenter__(self) -> LlmRouter:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every provider (HTTP clients, local models). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for backend in self._backends:
            try:
                await backend.provider.aclose()
            except Exception:  # one provider failing to close must not keep the others open
                log.exception("llm: closing backend %r failed", backend.name)

    # -- the request ------------------------------------------------------------------

    async def complete(self, messages: str | Sequence[Message], *, agent: str, conversation: str | None = None,
                       model: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                       grammar: str | None = None, on_token: Callable[[str], None] | None = None,
                       budget: BudgetPolicy | None = None) -> Completion:
        """Ask a model. `messages` is the chat (a string: one user message). `agent`
        and `conversation` name the budget accounts; `model` picks the backends (None:
        any, each with its first listed model). With `on_token` the answer streams:
        each piece of text is passed to it as it arrives. `grammar` (GBNF) goes to
        backends that accept one and is left out for the others.

        Raises `LlmRequestError`, `RequestTooLarge`, `BudgetExceeded`,
        `LlmUnavailable` (all `LlmError`, with `code`); ValueError for arguments that
        are not a request (no messages, an unknown role, `max_tokens` below 1)."""
        turns = _turns(messages)
        if max_tokens is None:
            max_tokens = DEFAULT_MAX_TOKENS
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if temperature is not None and not temperature >= 0:
            raise ValueError(f"temperature must be 0 or more, not {temperature!r}")
        if self._closed:
            raise LlmUnavailable("the LLM router is closed")
        prompt_estimate = sum(estimate_tokens(m["content"]) for m in turns)
        estimate = prompt_estimate + max_tokens
        stats = self._agents.get(agent)
        if stats is None:
            stats = self._agents[agent] = _AgentStats()

        serving = [b for b in self._backends if b.config.serves(model)]
        if not serving:
            stats.errors += 1
            raise LlmRequestError(f"no backend serves model {model!r} (backends: {self._describe_models()})")
        eligible = [b for b in serving if b.fits(estimate)]
        if not eligible:
            stats.errors += 1
            largest = max(b.bucket.capacity for b in serving if b.bucket is not None)
            raise RequestTooLarge(
                f"the request may need {estimate} tokens (estimated prompt {prompt_estimate} + max_tokens "
                f"{max_tokens}), more than the token bucket of any backend serving model {model!r} holds "
                f"(largest rate_limit_tpm: {largest}); it could never be sent")

        try:
            reservation = self._ledger.reserve(agent, conversation, budget, estimate,
                                               detail=f"estimated prompt {prompt_estimate} + max_tokens {max_tokens}")
        except LlmError as exc:
            stats.budget_refusals += 1
            log.info("llm: request of agent %r%s refused: %s", agent, _in(conversation), exc)
            raise
        stats.requests += 1
        relay = _Relay(on_token) if on_token is not None else None
        spent = 0
        try:
            completion = await self._attempts(turns, model=model, max_tokens=max_tokens, temperature=temperature,
                                              grammar=grammar, relay=relay, estimate=estimate, eligible=eligible,
                                              agent=agent, conversation=conversation)
            spent = completion.usage.total
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                stats.errors += 1
            if relay is not None and relay.chars:  # part of an answer was produced: count it, estimated
                spent = prompt_estimate + -(-relay.chars // CHARS_PER_TOKEN)
            if isinstance(exc, _CallbackFailed):
                raise exc.original from None
            raise
        finally:
            self._ledger.settle(reservation, spent)
        stats.prompt_tokens += completion.usage.prompt_tokens
        stats.completion_tokens += completion.usage.completion_tokens
        return completion

    async def _attempts(self, turns: tuple[Message, ...], *, model: str | None, max_tokens: int,
                        temperature: float | None, grammar: str | None, relay: _Relay | None, estimate: int,
                        eligible: list[_Backend], agent: str, conversation: str | None) -> Completion:
        attempts = self.config.retries + 1  # the first attempt, then `retries` more
        failures: list[str] = []
        candidates = list(eligible)
        attempt = 0
        while True:
            attempt += 1
            backend = await self._choose(candidates, estimate, failures)
            request = ChatRequest(turns, model or backend.config.default_model, max_tokens, temperature,
                                  grammar if backend.config.accepts_grammar else None)
            try:
                return await self._attempt(backend, request, relay, estimate, first=attempt == 1)
            except BackendFailure as failure:
                failures.append(f"{backend.name}: {failure.reason}")
                where = f"backend {backend.name!r} (attempt {attempt} of {attempts}, agent {agent!r}{_in(conversation)})"
                if failure.kind is FailureKind.REQUEST:
                    log.warning("llm: %s refused the request: %s", where, failure.reason)
                    raise LlmRequestError(f"backend {backend.name!r} refused the request: {failure.reason}") from None
                if failure.kind is FailureKind.BACKEND:
                    candidates.remove(backend)
                    if failure.status in (401, 403):
                        self._cool_down(backend, failure, self.config.max_cooldown_s)
                    log.warning("llm: %s will not serve this request: %s%s", where, failure.reason,
                                "; trying another backend" if candidates and attempt < attempts else "")
                    if not candidates:
                        raise LlmRequestError(_gave_up("every eligible backend refused the request", failures)) from None
                else:
                    seconds = self._cool_down(backend, failure, None)
                    log.warning("llm: %s failed: %s; cooling down %.1f s", where, failure.reason, seconds)
                if relay is not None and relay.chars:
                    raise LlmUnavailable(
                        f"backend {backend.name!r} failed after streaming {relay.chars} characters of the answer "
                        f"({failure.reason}); not retried, since the caller already received part of it") from None
                if attempt >= attempts:
                    log.warning("llm: request of agent %r%s gave up after %d attempts", agent, _in(conversation),
                                attempt)
                    raise LlmUnavailable(_gave_up(f"no answer after {attempt} attempts", failures)) from None
                await self._pause(attempt, backend, candidates, failures)

    async def _attempt(self, backend: _Backend, request: ChatRequest, relay: _Relay | None, estimate: int, *,
                       first: bool) -> Completion:
        """One try on one backend: bucket, slot, send; settles the bucket and counters."""
        stats = backend.stats
        stats.in_flight += 1
        taken = sent = False
        try:
            if backend.bucket is not None:
                await backend.bucket.take(estimate)
                taken = True
            async with backend.slots:
                stats.requests += 1
                if not first:
                    stats.retries += 1
                sent = True
                completion = await backend.provider.complete(request, on_token=relay)
        except BackendFailure as failure:
            stats.errors += 1
            stats.last_error = failure.reason
            raise
        finally:
            stats.in_flight -= 1
            if taken and not sent and backend.bucket is not None:
                backend.bucket.give_back(estimate)  # never sent: the tokens were not spent
        # answered: the estimate stays charged only for failures, which may have cost the server work
        backend.consecutive_failures = 0
        stats.prompt_tokens += completion.usage.prompt_tokens
        stats.completion_tokens += completion.usage.completion_tokens
        if backend.bucket is not None:
            difference = completion.usage.total - estimate
            if difference < 0:
                backend.bucket.give_back(-difference)
            elif difference > 0:
                backend.bucket.charge(difference)
        return completion

    async def _choose(self, candidates: list[_Backend], estimate: int, failures: list[str]) -> _Backend:
        """The backend for the next attempt (waiting out a cooldown of at most `max_wait_s`)."""
        now = self._clock()
        ready = [b for b in candidates if not b.cooling(now)]
        if ready:
            at_once = [b for b in ready if b.bucket is None or b.bucket.can_take_now(estimate)]
            return self._by_strategy(at_once or ready)
        first = min(candidates, key=lambda b: b.cooldown_until or 0.0)
        wait = (first.cooldown_until or now) - now
        if wait > self.config.max_wait_s:
            cooling = ", ".join(f"{b.name!r} for {(b.cooldown_until or now) - now:.1f} s after: {b.cooldown_reason}"
                                for b in candidates)
            raise LlmUnavailable(_gave_up(f"every eligible backend is cooling down ({cooling})", failures))
        log.info("llm: every eligible backend is cooling down; waiting %.1f s for %r", wait, first.name)
        await self._sleep(wait)
        return first

    def _by_strategy(self, ready: list[_Backend]) -> _Backend:
        strategy = self.config.strategy
        if strategy == "least-loaded":
            return min(ready, key=lambda b: (b.stats.in_flight, b.index))
        if strategy == "round-robin":
            count = len(self._backends)
            chosen = min(ready, key=lambda b: (b.index - self._next_round_robin) % count)
            self._next_round_robin = (chosen.index + 1) % count
            return chosen
        return min(ready, key=lambda b: b.index)

    async def _pause(self, attempt: int, failed: _Backend, candidates: list[_Backend], failures: list[str]) -> None:
        """Before the next attempt: none if another backend is ready, else backoff
        with jitter, no shorter than the shortest cooldown left, never past `max_wait_s`."""
        now = self._clock()
        if any(b is not failed and not b.cooling(now) for b in candidates):
            return
        backoff = min(self.config.max_wait_s, BACKOFF_BASE_S * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        cooldown_left = min((b.cooldown_until or now) - now for b in candidates)
        delay = max(backoff, cooldown_left)
        if delay > self.config.max_wait_s:
            raise LlmUnavailable(_gave_up(
                f"the next attempt would have to wait {delay:.1f} s (more than max_wait_s {self.config.max_wait_s:g})",
                failures))
        log.info("llm: retrying in %.2f s (attempt %d of %d)", delay, attempt + 1, self.config.retries + 1)
        await self._sleep(delay)

    def _cool_down(self, backend: _Backend, failure: BackendFailure, seconds: float | None) -> float:
        """Set `backend` aside for `seconds`, else its Retry-After, else 1 s doubling
        with each consecutive failure; never longer than `max_cooldown_s`."""
        backend.consecutive_failures += 1
        if seconds is None:
            if failure.retry_after is not None:
                seconds = failure.retry_after
            else:
                seconds = FIRST_COOLDOWN_S * 2 ** min(backend.consecutive_failures - 1, 30)
        seconds = min(seconds, self.config.max_cooldown_s)
        until = self._clock() + seconds
        if backend.cooldown_until is None or until > backend.cooldown_until:
            backend.cooldown_until = until
            backend.cooldown_reason = failure.reason
        backend.stats.cooldowns += 1
        return seconds

    # -- accounting -------------------------------------------------------------------

    def note_reask(self, agent: str) -> None:
        """Count one re-ask (an answer the agent loop could not use and asked again)."""
        stats = self._agents.get(agent)
        if stats is None:
            stats = self._agents[agent] = _AgentStats()
        stats.reasks += 1

    def forget_conversation(self, conversation: str) -> None:
        """Drop a conversation's budget account (call it when the conversation ends)."""
        self._ledger.forget_conversation(conversation)

    def tokens_used(self, *, agent: str | None = None, conversation: str | None = None) -> int:
        """Tokens counted against an agent (this run) or a conversation."""
        if conversation is not None:
            return self._ledger.used_by_conversation(conversation)
        return self._ledger.used_by_agent(agent or "")

    def status(self) -> dict[str, Any]:
        """Counters per backend and per agent, JSON-serialisable, without secrets:

        - `backends.NAME`: `provider`, `models`, `requests` (attempts sent), `errors`
          (attempts failed), `retries` (attempts that were not a request's first),
          `prompt_tokens`, `completion_tokens`, `in_flight`, `cooldowns` (times set
          aside), `cooldown_until` (ISO-8601 UTC, null when not cooling down),
          `last_error` (the last failure's reason, key blanked), `tokens_available`
          (in the token bucket; null without `rate_limit_tpm`);
        - `agents.NAME`: `requests` (calls past the budget check), `errors`,
          `prompt_tokens`, `completion_tokens`, `reasks`, `budget_refusals`,
          `tokens_used` (what the budget counts, this run)."""
        now, wall = self._clock(), self._wall_clock()
        backends: dict[str, Any] = {}
        for b in self._backends:
            s = b.stats
            cooling = b.cooling(now) and b.cooldown_until is not None
            backends[b.name] = {
                "provider": b.config.provider,
                "models": list(b.config.models),
                "requests": s.requests,
                "errors": s.errors,
                "retries": s.retries,
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "in_flight": s.in_flight,
                "cooldowns": s.cooldowns,
                "cooldown_until": _iso(wall + (b.cooldown_until or now) - now) if cooling else None,
                "last_error": s.last_error,
                "tokens_available": int(b.bucket.available) if b.bucket is not None else None,
            }
        agents = {name: {"requests": s.requests, "errors": s.errors, "prompt_tokens": s.prompt_tokens,
                         "completion_tokens": s.completion_tokens, "reasks": s.reasks,
                         "budget_refusals": s.budget_refusals, "tokens_used": self._ledger.used_by_agent(name)}
                  for name, s in self._agents.items()}
        return {"backends": backends, "agents": agents}

    def _describe_models(self) -> str:
        return "; ".join(f"{b.name}: {', '.join(b.config.models) if b.config.models else 'any model'}"
                         for b in self._backends) or "none"


def _turns(messages: str | Sequence[Message]) -> tuple[Message, ...]:
    if isinstance(messages, str):
        return (Message(role="user", content=messages),)
    turns: list[Message] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} is a {type(message).__name__}, not a mapping with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; roles are system, user, assistant")
        if not isinstance(content, str):
            raise ValueError(f"message {index} has content of type {type(content).__name__}, not str")
        turns.append(Message(role=role, content=content))
    if not turns:
        raise ValueError("no messages: give at least one")
    return tuple(turns)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _in(conversation: str | None) -> str:
    return f" in conversation {conversation!r}" if conversation is not None else ""


def _gave_up(what: str, failures: list[str]) -> str:
    return what + (": " + "; ".join(failures[-5:]) if failures else "")
