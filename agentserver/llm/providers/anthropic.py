"""The `anthropic` provider: the Messages API, `POST {base_url}/v1/messages` (base_url
defaults to https://api.anthropic.com and is given without `/v1`).

Every system message of the request, wherever it stands, is joined (blank line
between, in order) into the one top-level `system` field; the other turns go in
`messages` as they are. `max_tokens`, which the API requires, is always sent. The key
goes in `x-api-key`, with `anthropic-version: 2023-06-01`. Grammars are not a feature
of this API and are never sent.

Usage: `usage.input_tokens` (plus cache reads and writes, which are prompt tokens too)
and `usage.output_tokens`; streamed, from `message_start` and the running total in
`message_delta`. A stream must reach `message_stop`; an `error` event fails the
attempt (retried, unless the API says the request is invalid).
"""

from __future__ import annotations

from typing import Any

from agentserver.llm.providers.base import BackendFailure, ChatRequest, FailureKind, TokenCallback, redact
from agentserver.llm.providers.http import HttpProvider, decode_event, dig, malformed, token_count
from agentserver.llm.providers.sse import SseEvent
from agentserver.llm.types import Completion, Usage

__all__ = ["AnthropicProvider", "DEFAULT_BASE_URL", "API_VERSION"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


class AnthropicProvider(HttpProvider):
    """Chat over Anthropic's Messages API."""

    async def complete(self, request: ChatRequest, *, on_token: TokenCallback | None = None) -> Completion:
        if request.model is None:
            raise BackendFailure("the Messages API needs a model: name one in the request or in this backend's "
                                 "models:", kind=FailureKind.BACKEND)
        url = (self.backend.base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"
        body = self._body(request, stream=on_token is not None)
        headers = {"anthropic-version": API_VERSION,
                   "accept": "text/event-stream" if on_token is not None else "application/json"}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        if on_token is None:
            data = await self.post_json(url, body, headers)
            blocks = dig(data, "content")
            if not isinstance(blocks, list):
                raise malformed("content is not a list")
            text = "".join(b["text"] for b in blocks
                           if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
            usage = dig(data, "usage")
            return Completion(text, Usage(_prompt_tokens(usage), token_count(dig(usage, "output_tokens"))),
                              self.backend.name, request.model)
        stream = _StreamState(on_token, self._api_key)
        await self.post_stream(url, body, headers, stream.on_event)
        if not stream.finished:
            raise BackendFailure("stream ended before message_stop (cut short)", kind=FailureKind.TRANSIENT)
        return Completion("".join(stream.pieces), Usage(stream.prompt_tokens, stream.completion_tokens),
                          self.backend.name, request.model)

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        system = [m["content"] for m in request.messages if m["role"] == "system"]
        turns = [{"role": m["role"], "content": m["content"]} for m in request.messages if m["role"] != "system"]
        body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = turns
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        return body


def _prompt_tokens(usage: Any) -> int:
    total = token_count(dig(usage, "input_tokens"))
    for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        value = usage.get(extra) if isinstance(usage, dict) else None
        if value is not None:
            total += token_count(value)
    return total


class _StreamState:
    """What a Messages stream has said so far."""

    def __init__(self, on_token: TokenCallback, secret: str | None) -> None:
        self.on_token = on_token
        self.secret = secret
        self.pieces: list[str] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finished = False

    def on_event(self, event: SseEvent) -> None:
        if event.event == "ping":
            return
        data = decode_event(event)
        if not isinstance(data, dict):
            raise malformed("an event is not an object")
        kind = data.get("type", event.event)
        if kind == "message_start":
            usage = dig(data, "message", "usage")
            self.prompt_tokens = _prompt_tokens(usage)
            self.completion_tokens = token_count(usage.get("output_tokens", 0))
        elif kind == "content_block_delta":
            delta = dig(data, "delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                piece = delta.get("text")
                if not isinstance(piece, str):
                    raise malformed("a text_delta has no text")
                if piece:
                    self.pieces.append(piece)
                    self.on_token(piece)
        elif kind == "message_delta":
            usage = data.get("usage")
            if isinstance(usage, dict):
                if "output_tokens" in usage:  # a running total, not an increment
                    self.completion_tokens = token_count(usage["output_tokens"])
                if "input_tokens" in usage:
                    self.prompt_tokens = _prompt_tokens(usage)
        elif kind == "message_stop":
            self.finished = True
        elif kind == "error":
            error = data.get("error")
            error_type = error.get("type") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            refused = error_type == "invalid_request_error"
            raise BackendFailure(f"error in stream: {error_type}: {redact(str(message), self.secret, limit=200)}",
                                 kind=FailureKind.REQUEST if refused else FailureKind.TRANSIENT)
