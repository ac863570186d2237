"""API keys: read from the environment mapping (as loaded from .env), sent only in
their header, and never found in logs, errors, status or reprs. Prompt text is never
logged either."""

from __future__ import annotations

import json
import logging

import pytest
from dotenv import dotenv_values

from agentserver.llm import BackendConfig, LlmConfig, LlmConfigError, LlmRequestError, LlmRouter, LlmUnavailable
from tests.fake_llm import (  # noqa: F401  (fixtures)
    Answer,
    Fail,
    FakeTime,
    Stream,
    anthropic_server,
    openai_server,
)

KEY = "sk-live-0123456789abcdefSECRET"
PROMPT = "PROMPT-TEXT-that-must-not-be-logged"


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() + repr(record.args) for record in caplog.records)


async def test_a_key_from_dotenv_is_sent_and_never_shown(tmp_path, caplog, openai_server, anthropic_server, monkeypatch):
    monkeypatch.delenv("LLM_TEST_KEY", raising=False)
    (tmp_path / ".env").write_text(f"LLM_TEST_KEY={KEY}\n")
    env = {k: v for k, v in dotenv_values(tmp_path / ".env").items() if v is not None}
    echo = f"Incorrect API key provided: {KEY}. You can find your API key at ..."
    openai_server.add(Fail(500, message=echo), Fail(401, message=echo))
    anthropic_server.add(Fail(529, message=echo), Stream(["fine"]))
    config = LlmConfig(backends=(
        BackendConfig(name="oa", provider="openai", base_url=openai_server.base_url, api_key_env="LLM_TEST_KEY",
                      models=("gpt",)),
        BackendConfig(name="an", provider="anthropic", base_url=anthropic_server.base_url,
                      api_key_env="LLM_TEST_KEY", models=("claude",)),
    ))
    caplog.set_level(logging.DEBUG)
    ft = FakeTime()
    async with LlmRouter(config, env=env, **ft.router_options()) as router:
        with pytest.raises(LlmRequestError) as refused:
            await router.complete(PROMPT, agent="a", model="gpt")
        answer = await router.complete(PROMPT, agent="a", model="claude", on_token=lambda piece: None)
        status = json.dumps(router.status())
        shown = [repr(router), repr(router._backends[0].provider), repr(config)]
    assert answer.text == "fine"
    assert openai_server.seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert anthropic_server.seen[0].headers["x-api-key"] == KEY
    assert "***" in str(refused.value) and KEY not in str(refused.value)
    logged = everything_logged(caplog)
    assert "cooling down" in logged  # the failures were logged ...
    assert KEY not in logged and PROMPT not in logged  # ... without the key or the prompt
    assert KEY not in status and "***" in status  # last_error, redacted
    assert all(KEY not in text for text in shown)


async def test_a_key_variable_missing_from_the_environment_is_named_not_guessed():
    config = LlmConfig(backends=(BackendConfig(name="oa", provider="openai", base_url="http://127.0.0.1:9/v1",
                                               api_key_env="NOT_SET_ANYWHERE"),))
    with pytest.raises(LlmConfigError, match="NOT_SET_ANYWHERE .*is not set; put it in .env") as caught:
        LlmRouter(config, env={"OTHER": KEY})
    assert caught.value.code == "llm-config" and KEY not in str(caught.value)


async def test_an_unavailable_error_lists_reasons_without_the_key(openai_server):
    openai_server.add(Fail(503, message=f"upstream said {KEY}"), Fail(503, message=f"upstream said {KEY}"))
    config = LlmConfig(backends=(BackendConfig(name="oa", provider="openai", base_url=openai_server.base_url,
                                               api_key_env="K"),), retries=2)
    async with LlmRouter(config, env={"K": KEY}, **FakeTime().router_options()) as router:
        with pytest.raises(LlmUnavailable) as caught:
            await router.complete(PROMPT, agent="a")
    message = str(caught.value)
    assert "oa: HTTP 503: upstream said ***" in message
    assert KEY not in message and PROMPT not in message
