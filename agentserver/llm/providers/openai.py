"""The `openai` provider: any OpenAI-compatible chat server (OpenAI, vLLM, Ollama's
`/v1`, llama.cpp server, LM Studio), `POST {base_url}/chat/completions`.

The body carries only fields every such server knows: `model` (left out when neither
the request nor the backend names one), `messages`, `max_tokens`, `temperature` when
given, and for streaming `stream` with `stream_options: {"include_usage": true}` so
the last chunk reports usage. `grammar` (GBNF) is added only for a backend marked
`grammar: true` (a llama.cpp server); other servers refuse unknown fields. The key,
if the backend names one, goes in `Authorization: Bearer`.

Usage comes from the answer (`usage.prompt_tokens`, `usage.completion_tokens`); a
server that reports none is estimated at four characters a token. A stream must end
with `[DONE]` or a chunk with a `finish_reason`; one that stops short is a failure.
"""

from __future__ import annotations

import logging
from typing import Any

from agentserver.llm.providers.base import BackendFailure, ChatRequest, FailureKind, TokenCallback, redact
from agentserver.llm.providers.http import HttpProvider, decode_event, dig, malformed, token_count
from agentserver.llm.providers.sse import SseEvent
from agentserver.llm.types import Completion, Usage, estimate_tokens

__all__ = ["OpenAIProvider"]

log = logging.getLogger("agentserver.llm")


class OpenAIProvider(HttpProvider):
    """Chat completions over an OpenAI-compatible HTTP API."""

    async def complete(self, request: ChatRequest, *, on_token: TokenCallback | None = None) -> Completion:
        if self.backend.base_url is None:  # the config check refuses this; a guard for direct use
            raise BackendFailure("no base_url", kind=FailureKind.BACKEND)
        url = self.backend.base_url.rstrip("/") + "/chat/completions"
        body = self._body(request, stream=on_token is not None)
        headers = {"accept": "text/event-stream" if on_token is not None else "application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        if on_token is None:
            return self._completion(request, await self.post_json(url, body, headers))
        stream = _StreamState(on_token, self._api_key)
        await self.post_stream(url, body, headers, stream.on_event)
        if not stream.finished:
            raise BackendFailure("stream ended before [DONE] (cut short)", kind=FailureKind.TRANSIENT)
        text = "".join(stream.pieces)
        usage = stream.usage
        if usage is None:
            log.debug("llm: backend %r streamed no usage; estimated at 4 characters a token", self.backend.name)
            usage = _estimate(request, text)
        return Completion(text, usage, self.backend.name, request.model or stream.model or "")

    def _body(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if request.model is not None:
            body["model"] = request.model
        body["messages"] = [{"role": m["role"], "content": m["content"]} for m in request.messages]
        body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.grammar is not None and self.backend.grammar:
            body["grammar"] = request.grammar
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _completion(self, request: ChatRequest, data: Any) -> Completion:
        text = dig(data, "choices", 0, "message", "content")
        if not isinstance(text, str):
            raise malformed("choices.0.message.content is not text")
        usage_data = data.get("usage") if isinstance(data, dict) else None
        if usage_data:
            usage = Usage(token_count(dig(usage_data, "prompt_tokens")),
                          token_count(dig(usage_data, "completion_tokens")))
        else:
            usage = _estimate(request, text)
        model = data.get("model") if isinstance(data.get("model"), str) else None
        return Completion(text, usage, self.backend.name, request.model or model or "")


class _StreamState:
    """What a chat-completion stream has said so far."""

    def __init__(self, on_token: TokenCallback, secret: str | None) -> None:
        self.on_token = on_token
        self.secret = secret
        self.pieces: list[str] = []
        self.usage: Usage | None = None
        self.model: str | None = None
        self.finished = False

    def on_event(self, event: SseEvent) -> None:
        if event.data.strip() == "[DONE]":
            self.finished = True
            return
        data = decode_event(event)
        if not isinstance(data, dict):
            raise malformed("a stream chunk is not an object")
        if "error" in data:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise BackendFailure(f"error in stream: {redact(str(message), self.secret, limit=200)}",
                                 kind=FailureKind.TRANSIENT)
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                raise malformed("a stream choice is not an object")
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                self.pieces.append(piece)
                self.on_token(piece)
            if choice.get("finish_reason"):
                self.finished = True
        usage = data.get("usage")
        if usage:
            self.usage = Usage(token_count(dig(usage, "prompt_tokens")), token_count(dig(usage, "completion_tokens")))


def _estimate(request: ChatRequest, text: str) -> Usage:
    return Usage(sum(estimate_tokens(m["content"]) for m in request.messages), estimate_tokens(text))
