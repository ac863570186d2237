"""Streaming through the router: pieces reach `on_token` before the answer is
complete, usage is counted from the stream's own report, broken streams are handled
by the retry rules, and a failing callback aborts the request."""

from __future__ import annotations

import asyncio

import pytest

from agentserver.llm import BackendConfig, LlmConfig, LlmRouter, LlmUnavailable
from tests.fake_llm import (  # noqa: F401  (fixtures)
    Fail,
    FakeAnthropic,
    FakeOpenAI,
    FakeServer,
    FakeTime,
    Hang,
    Stream,
    anthropic_server,
    openai_server,
)

GUARD = 10.0


@pytest.fixture(params=["openai", "anthropic"])
def server(request: pytest.FixtureRequest, openai_server, anthropic_server) -> FakeServer:
    return openai_server if request.param == "openai" else anthropic_server


def make_router(server: FakeServer, ft: FakeTime, retries: int = 3) -> LlmRouter:
    anthropic = isinstance(server, FakeAnthropic)
    assert isinstance(server, (FakeAnthropic, FakeOpenAI))
    config = LlmConfig(backends=(BackendConfig(name="s", provider="anthropic" if anthropic else "openai",
                                               base_url=server.base_url, models=("m",),
                                               api_key_env="KEY" if anthropic else None),), retries=retries)
    return LlmRouter(config, env={"KEY": "test-key"}, **ft.router_options())


async def test_pieces_arrive_before_the_answer_is_complete_and_usage_comes_from_the_stream(server):
    server.add(Stream(["<Sum>", "<Value>4</Value>", "</Sum>"], prompt_tokens=123, completion_tokens=9, pause_after=1))
    pieces: list[str] = []
    async with make_router(server, FakeTime()) as router:
        task = asyncio.create_task(router.complete("2+2?", agent="calc", on_token=pieces.append))
        await asyncio.wait_for(server.paused.wait(), GUARD)
        while not pieces:
            await asyncio.sleep(0.005)
        assert pieces == ["<Sum>"] and not task.done()
        server.release.set()
        answer = await asyncio.wait_for(task, GUARD)
        status = router.status()
    assert pieces == ["<Sum>", "<Value>4</Value>", "</Sum>"]
    assert answer.text == "<Sum><Value>4</Value></Sum>"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (123, 9)
    assert status["backends"]["s"]["completion_tokens"] == 9
    assert status["agents"]["calc"]["prompt_tokens"] == 123
    body = server.seen[0].body
    assert body["stream"] is True
    if server.path.endswith("chat/completions"):
        assert body["stream_options"] == {"include_usage": True}
        assert server.seen[0].headers["accept"] == "text/event-stream"
    else:
        assert "stream_options" not in body


async def test_a_stream_without_usage_is_estimated(openai_server):
    openai_server.add(Stream(["abcd", "efgh"], usage=False))
    async with make_router(openai_server, FakeTime()) as router:
        answer = await router.complete("12345678", agent="q", on_token=lambda piece: None)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 2)


async def test_a_stream_cut_before_any_text_is_retried(server):
    server.add(Stream(["never"], cut_after=0), Stream(["whole"]))
    ft = FakeTime()
    pieces: list[str] = []
    async with make_router(server, ft) as router:
        answer = await router.complete("hi", agent="q", on_token=pieces.append)
    assert answer.text == "whole" and pieces == ["whole"]
    assert len(server.seen) == 2 and ft.sleeps == [1.0]


async def test_a_stream_cut_after_some_text_is_not_retried(server):
    server.add(Stream(["part ", "rest"], cut_after=1), Stream(["never sent"]))
    ft = FakeTime()
    pieces: list[str] = []
    async with make_router(server, ft) as router:
        with pytest.raises(LlmUnavailable, match="after streaming 5 characters.*not retried"):
            await router.complete("hi", agent="q", conversation="c", on_token=pieces.append)
        assert router.tokens_used(conversation="c") == 1 + 2  # the prompt and the 5 characters, estimated
        assert router.status()["backends"]["s"]["cooldown_until"] is not None
    assert pieces == ["part "]
    assert len(server.seen) == 1 and ft.sleeps == []


async def test_an_error_status_before_the_stream_is_retried(server):
    server.add(Fail(503, retry_after="1"), Stream(["fine"]))
    async with make_router(server, FakeTime()) as router:
        answer = await router.complete("hi", agent="q", on_token=lambda piece: None)
    assert answer.text == "fine"


async def test_a_callback_that_raises_aborts_the_request_with_its_own_exception(server):
    server.add(Stream(["one", "two"], pause_after=1))

    def explode(piece: str) -> None:
        raise KeyError("the caller's bug")

    async with make_router(server, FakeTime()) as router:
        with pytest.raises(KeyError, match="the caller's bug"):
            await asyncio.wait_for(router.complete("hi", agent="q", on_token=explode), GUARD)
        status = router.status()
    await asyncio.wait_for(server.seen[0].disconnected.wait(), GUARD)
    assert len(server.seen) == 1  # not retried
    assert status["agents"]["q"]["errors"] == 1 and status["backends"]["s"]["in_flight"] == 0


async def test_cancelling_a_stream_disconnects(server):
    server.add(Stream(["one", "two"], pause_after=1))
    pieces: list[str] = []
    async with make_router(server, FakeTime()) as router:
        task = asyncio.create_task(router.complete("hi", agent="q", on_token=pieces.append))
        await asyncio.wait_for(server.paused.wait(), GUARD)
        while not pieces:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.seen[0].disconnected.wait(), GUARD)
        assert router.status()["backends"]["s"]["in_flight"] == 0


async def test_a_hanging_server_is_cancelled_from_the_stream_too(openai_server):
    openai_server.add(Hang())
    async with make_router(openai_server, FakeTime()) as router:
        task = asyncio.create_task(router.complete("hi", agent="q", on_token=lambda piece: None))
        while not openai_server.seen:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.wait_for(openai_server.seen[0].disconnected.wait(), GUARD)
