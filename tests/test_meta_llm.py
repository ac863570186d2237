"""`meta.llm` through a running pump: the organism's router, budgets, usage in status,
keys from .env, and cancellation reaching the model server (DESIGN §12)."""

import asyncio
import logging

import pytest

from agentserver import RemoteError, bootstrap
from tests.fake_llm import Answer, Hang, Stream, openai_server  # noqa: F401 - a fixture
from tests.llm_organisms import Question
from tests.organisms import PROBE
from tests.support import HANG_GUARD, organism, settle

THINKER = {"name": "thinker", "payload_class": "tests.llm_organisms.Question", "handler": "tests.llm_organisms.thinker"}


def with_llm(server, *, budget=None, extra_backend: str = "") -> str:
    listener = dict(THINKER, llm={"model": "m1", "max_tokens": 50, **({"budget": budget} if budget else {})})
    text = organism(listener)
    backend = f"  - {{name: fake, provider: openai, base_url: '{server.base_url}', models: [m1], api_key_env: FAKE_KEY}}\n"
    return text + "llm:\n  retries: 0\n  backends:\n" + backend + extra_backend


async def test_a_handler_asks_the_model_and_its_usage_shows_in_status(start, openai_server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test-secret")
    openai_server.add(Answer("forty-two", prompt_tokens=12, completion_tokens=3))
    pump = await start(with_llm(openai_server))
    async with pump.client("tester") as client:
        reply = await client.ask(Question(text="the answer?"), to="thinker", timeout=HANG_GUARD)
    assert (reply.payload.text, reply.payload.tokens, reply.payload.backend) == ("forty-two", 15, "fake")
    (seen,) = openai_server.seen
    assert seen.body["model"] == "m1" and seen.body["max_tokens"] == 50  # the listener's llm: defaults
    assert seen.headers["authorization"] == "Bearer sk-test-secret"
    llm = pump.status()["llm"]
    assert llm["agents"]["thinker"]["prompt_tokens"] == 12 and llm["agents"]["thinker"]["completion_tokens"] == 3
    assert llm["backends"]["fake"]["requests"] == 1
    assert "sk-test-secret" not in repr(pump.status())


async def test_a_spent_budget_refuses_before_sending_and_the_caller_hears_budget(start, openai_server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    openai_server.add(Answer("first", prompt_tokens=30, completion_tokens=20))
    pump = await start(with_llm(openai_server, budget={"tokens_per_agent": 80}))
    async with pump.client("tester") as client:
        await client.ask(Question(text="one"), to="thinker", timeout=HANG_GUARD)  # 50 spent of 80
        with pytest.raises(RemoteError) as refused:
            await client.ask(Question(text="two"), to="thinker", timeout=HANG_GUARD)  # needs ~52 more
    assert refused.value.code == "budget"
    assert len(openai_server.seen) == 1  # nothing was sent for the second


async def test_the_answer_streams_to_the_handler(start, openai_server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    openai_server.add(Stream(["Hel", "lo", "!"], prompt_tokens=5, completion_tokens=3))
    PROBE.notes["stream"] = True
    pump = await start(with_llm(openai_server))
    async with pump.client("tester") as client:
        reply = await client.ask(Question(text="hi"), to="thinker", timeout=HANG_GUARD)
    assert reply.payload.text == "Hello!" and PROBE.notes["pieces"] == ["Hel", "lo", "!"]
    assert reply.payload.tokens == 8  # the usage of the stream's last chunk


async def test_cancelling_the_conversation_aborts_the_model_request(start, openai_server, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    openai_server.add(Hang())
    pump = await start(with_llm(openai_server))
    async with pump.client("tester") as client:
        thread_id = await client.send(Question(text="think forever"), to="thinker")
        while not openai_server.seen:
            await asyncio.sleep(0.01)
        assert await client.cancel(thread_id)
        await asyncio.wait_for(openai_server.seen[0].disconnected.wait(), HANG_GUARD)
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert frame.payload.code == "cancelled"
        await settle(pump)
    assert pump.status()["llm"]["backends"]["fake"]["in_flight"] == 0


async def test_the_key_comes_from_dot_env_and_is_never_logged(tmp_path, monkeypatch, openai_server, caplog):
    monkeypatch.delenv("FAKE_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("FAKE_KEY=sk-from-dotenv-123\n")
    (tmp_path / "organism.yaml").write_text(with_llm(openai_server))
    openai_server.add(Answer("ok"))
    caplog.set_level(logging.DEBUG)
    async with bootstrap(tmp_path / "organism.yaml") as pump:
        async with pump.client("tester") as client:
            reply = await client.ask(Question(text="key?"), to="thinker", timeout=HANG_GUARD)
        status = pump.status()
    assert reply.payload.text == "ok"
    assert openai_server.seen[0].headers["authorization"] == "Bearer sk-from-dotenv-123"
    assert "sk-from-dotenv-123" not in caplog.text and "sk-from-dotenv-123" not in repr(status)


def test_an_llm_block_without_a_backend_serving_its_model_is_a_config_error(openai_server, monkeypatch):
    from agentserver import ConfigError, load_config

    monkeypatch.setenv("FAKE_KEY", "k")
    text = with_llm(openai_server).replace("model: m1", "model: m9")
    with pytest.raises(ConfigError) as problems:
        load_config("organism.yaml", text=text)
    assert any("model 'm9' is served by no backend" in p for p in problems.value.problems)
