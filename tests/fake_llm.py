"""Fake model servers for the LLM tests: real HTTP on 127.0.0.1 (an ephemeral port),
built with aiohttp.web, speaking the OpenAI chat-completions and Anthropic Messages
dialects well enough for the router's clients.

A server answers from a script, one entry per request, in order:

- `Answer(text, prompt_tokens, completion_tokens)`: a complete JSON answer;
- `Stream(pieces, ..., usage=True, cut_after=None, pause_after=None)`: server-sent
  events, one per piece, then the usage (OpenAI: the final `include_usage` chunk;
  Anthropic: `message_start` and `message_delta`); `cut_after=n` drops the connection
  after n pieces; `pause_after=n` waits after n pieces until `server.release` is set;
- `Fail(status, retry_after=None)`: an error status in the dialect's error body, with
  `Retry-After` if given (seconds or an HTTP date, as a string);
- `Hang()`: accept the request and never answer;
- `Raw(status, body, content_type)`: exactly these bytes;
and each entry may have a `delay` (seconds) before it answers. With the script used
up the server answers 500 "script exhausted" (so a test that sends too much fails).

Every request is recorded (`server.seen`): path, headers, JSON body, and whether the
client went away before the answer was complete (`disconnected`, an asyncio.Event).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Self

import pytest
from aiohttp import web


@dataclass
class Answer:
    text: str
    prompt_tokens: int = 11
    completion_tokens: int = 7
    delay: float = 0.0


@dataclass
class Stream:
    pieces: list[str]
    prompt_tokens: int = 11
    completion_tokens: int = 7
    usage: bool = True
    cut_after: int | None = None
    pause_after: int | None = None
    delay: float = 0.0


@dataclass
class Fail:
    status: int
    retry_after: str | None = None
    message: str = "fake failure"
    delay: float = 0.0


@dataclass
class Hang:
    delay: float = 0.0


@dataclass
class Raw:
    status: int
    body: bytes
    content_type: str = "application/json"
    delay: float = 0.0


Reply = Answer | Stream | Fail | Hang | Raw


@dataclass
class Seen:
    """One request as the fake server received it."""

    path: str
    headers: dict[str, str]
    body: Any
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


class FakeServer:
    """A scripted HTTP model server; `async with` starts and stops it."""

    path = "/"

    def __init__(self, *script: Reply) -> None:
        self.script: deque[Reply] = deque(script)
        self.seen: list[Seen] = []
        self.release = asyncio.Event()  # lets a paused stream go on
        self.paused = asyncio.Event()  # set when a stream reaches its pause
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, *replies: Reply) -> None:
        self.script.extend(replies)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        seen = Seen(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        self.seen.append(seen)
        reply = self.script.popleft() if self.script else Fail(500, message="fake: script exhausted")
        try:
            if reply.delay:
                await asyncio.sleep(reply.delay)
            return await self._reply(request, reply, body)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.disconnected.set()
            raise

    async def _reply(self, request: web.Request, reply: Reply, body: Any) -> web.StreamResponse:
        if isinstance(reply, Hang):
            await asyncio.Event().wait()  # until the client goes away (the handler is cancelled)
        if isinstance(reply, Raw):
            return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
        if isinstance(reply, Fail):
            headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
            return web.json_response(self.error_body(reply), status=reply.status, headers=headers)
        if isinstance(reply, Answer):
            return web.json_response(self.answer_body(reply, body))
        assert isinstance(reply, Stream)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent_pieces = 0
        for kind, data in self.stream_events(reply, body):
            if kind == "piece":
                if reply.cut_after is not None and sent_pieces == reply.cut_after:
                    assert request.transport is not None
                    request.transport.abort()  # mid-stream disconnect: no terminating chunk
                    return response
                if reply.pause_after is not None and sent_pieces == reply.pause_after:
                    self.paused.set()
                    await self.release.wait()
                sent_pieces += 1
            await response.write(data)
        await response.write_eof()
        return response

    # -- the dialect, per subclass --

    def error_body(self, reply: Fail) -> Any:
        raise NotImplementedError

    def answer_body(self, reply: Answer, request: Any) -> Any:
        raise NotImplementedError

    def stream_events(self, reply: Stream, request: Any) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError


def sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class FakeOpenAI(FakeServer):
    """`POST /v1/chat/completions`; `base_url` is `{url}/v1`."""

    path = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def error_body(self, reply: Fail) -> Any:
        return {"error": {"message": reply.message, "type": "fake_error", "code": reply.status}}

    def answer_body(self, reply: Answer, request: Any) -> Any:
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": request.get("model", "fake-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                      "total_tokens": reply.prompt_tokens + reply.completion_tokens},
        }

    def stream_events(self, reply: Stream, request: Any) -> Iterator[tuple[str, bytes]]:
        model = request.get("model", "fake-model")
        head = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model}
        yield "head", sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        for piece in reply.pieces:
            yield "piece", sse({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        yield "tail", sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        include = (request.get("stream_options") or {}).get("include_usage")
        if reply.usage and include:
            yield "tail", sse({**head, "choices": [], "usage": {
                "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens}})
        yield "tail", sse("[DONE]")


class FakeAnthropic(FakeServer):
    """`POST /v1/messages`; `base_url` is `url` (the provider adds `/v1/messages`)."""

    path = "/v1/messages"

    @property
    def base_url(self) -> str:
        return self.url

    def error_body(self, reply: Fail) -> Any:
        kind = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error",
                400: "invalid_request_error", 404: "not_found_error"}.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": reply.message}}

    def answer_body(self, reply: Answer, request: Any) -> Any:
        return {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": request.get("model"),
            "content": [{"type": "text", "text": reply.text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
        }

    def stream_events(self, reply: Stream, request: Any) -> Iterator[tuple[str, bytes]]:
        usage = {"input_tokens": reply.prompt_tokens if reply.usage else 0, "output_tokens": 1}
        yield "head", sse({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": request.get("model"), "content": [],
            "stop_reason": None, "usage": usage}}, "message_start")
        yield "head", sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                          "content_block_start")
        yield "head", sse({"type": "ping"}, "ping")
        for piece in reply.pieces:
            yield "piece", sse({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": piece}}, "content_block_delta")
        yield "tail", sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        yield "tail", sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": reply.completion_tokens if reply.usage else 0}},
                          "message_delta")
        yield "tail", sse({"type": "message_stop"}, "message_stop")


class FakeTime:
    """A clock and a sleep for the router: sleeping records the delay and moves the
    clock on at once, so tests assert on waits without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL_EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def router_options(self) -> dict[str, Any]:
        return {"clock": self.clock, "sleep": self.sleep, "wall_clock": self.wall, "rng": random.Random(7)}


WALL_EPOCH = 1_700_000_000.0  # FakeTime's wall clock at now == 0 (a whole second)


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def openai_server_2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def anthropic_server() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server
