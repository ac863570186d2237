"""The anthropic provider's side of the Messages API: one `system` field carrying
every system message, the key and version headers, `max_tokens` always sent."""

from __future__ import annotations

import pytest

from agentserver.llm import BackendConfig, LlmConfig, LlmRequestError, LlmRouter, Message
from tests.fake_llm import Answer, Fail, FakeAnthropic, FakeTime, Raw, anthropic_server  # noqa: F401  (fixture)


def make_router(server: FakeAnthropic, **options: object) -> LlmRouter:
    backend = BackendConfig(name="claude", provider="anthropic", base_url=server.base_url, api_key_env="ANTHROPIC_KEY",
                            models=("claude-test",), **options)  # type: ignore[arg-type]
    return LlmRouter(LlmConfig(backends=(backend,)), env={"ANTHROPIC_KEY": "sk-ant-test"},
                     **FakeTime().router_options())


async def test_every_system_message_goes_into_the_one_system_field(anthropic_server):
    anthropic_server.add(Answer("<Plan/>", prompt_tokens=40, completion_tokens=4))
    messages: list[Message] = [
        {"role": "system", "content": "You plan trips."},
        {"role": "system", "content": "Peers: calculator, weather."},
        {"role": "user", "content": "<Task/>"},
        {"role": "assistant", "content": "<Add/>"},
        {"role": "user", "content": "<Sum/>"},
    ]
    async with make_router(anthropic_server) as router:
        answer = await router.complete(messages, agent="planner", max_tokens=300, temperature=0.5)
    (seen,) = anthropic_server.seen
    assert seen.path == "/v1/messages"
    assert seen.body == {
        "model": "claude-test",
        "max_tokens": 300,
        "system": "You plan trips.\n\nPeers: calculator, weather.",
        "messages": [{"role": "user", "content": "<Task/>"}, {"role": "assistant", "content": "<Add/>"},
                     {"role": "user", "content": "<Sum/>"}],
        "temperature": 0.5,
    }
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert answer.text == "<Plan/>" and answer.model == "claude-test" and answer.backend == "claude"
    assert answer.usage.total == 44


async def test_max_tokens_is_always_sent_and_grammar_never(anthropic_server):
    anthropic_server.add(Answer("ok"))
    async with make_router(anthropic_server) as router:
        await router.complete("hi", agent="a", grammar='root ::= "x"')
    body = anthropic_server.seen[0].body
    assert body["max_tokens"] == 1024 and "grammar" not in body and "system" not in body


async def test_a_system_message_after_the_turns_is_not_dropped(anthropic_server):
    anthropic_server.add(Answer("ok"))
    async with make_router(anthropic_server) as router:
        await router.complete([{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}],
                              agent="a")
    assert anthropic_server.seen[0].body["system"] == "Be brief."


async def test_cache_tokens_count_as_prompt_tokens(anthropic_server):
    anthropic_server.add(Raw(200, b'{"content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 5, '
                                  b'"cache_read_input_tokens": 100, "output_tokens": 2}}'))
    async with make_router(anthropic_server) as router:
        answer = await router.complete("hi", agent="a")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (105, 2)


async def test_an_invalid_request_is_not_retried(anthropic_server):
    anthropic_server.add(Fail(400, message="messages: at least one message is required"))
    async with make_router(anthropic_server) as router:
        with pytest.raises(LlmRequestError, match="at least one message is required"):
            await router.complete([{"role": "system", "content": "only a system prompt"}], agent="a")
    assert len(anthropic_server.seen) == 1
