"""The router against real HTTP fakes: error classes and their retry rules,
Retry-After, strategies, models, cooldowns, token buckets, budgets, cancellation.

Time is fake (`FakeTime`): the router's sleeps are recorded and move the clock on at
once, so waits are asserted by value and never taken. Real waits appear only as
guards against hangs."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from agentserver.llm import (
    BackendConfig,
    BudgetExceeded,
    BudgetPolicy,
    LlmConfig,
    LlmRequestError,
    LlmRouter,
    LlmUnavailable,
    RequestTooLarge,
)
from tests.fake_llm import (  # noqa: F401  (fixtures)
    Answer,
    Fail,
    FakeOpenAI,
    FakeTime,
    Hang,
    Raw,
    openai_server,
    openai_server_2,
)

GUARD = 10.0  # seconds; only a guard against hangs


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


def backend(server: FakeOpenAI, name: str = "a", **options: object) -> BackendConfig:
    return BackendConfig(name=name, provider="openai", base_url=server.base_url, **options)  # type: ignore[arg-type]


def make_router(ft: FakeTime, *backends: BackendConfig, strategy: str = "failover", retries: int = 3,
                env: dict[str, str] | None = None) -> LlmRouter:
    config = LlmConfig(backends=backends, strategy=strategy, retries=retries)  # type: ignore[arg-type]
    return LlmRouter(config, env=env or {}, **ft.router_options())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a plain answer -----------------------------------------------------------------------


async def test_an_answer_carries_text_usage_backend_and_model(ft, openai_server):
    openai_server.add(Answer("hello there", prompt_tokens=12, completion_tokens=3))
    async with make_router(ft, backend(openai_server, models=("m1",))) as router:
        answer = await router.complete("hi", agent="greeter", model="m1", max_tokens=50)
        assert (answer.text, answer.backend, answer.model) == ("hello there", "a", "m1")
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total) == (12, 3, 15)
        status = router.status()
    (seen,) = openai_server.seen
    assert seen.body == {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    assert "authorization" not in seen.headers  # no api_key_env: no key
    assert status["backends"]["a"]["requests"] == 1
    assert status["backends"]["a"]["prompt_tokens"] == 12
    assert status["agents"]["greeter"] == {"requests": 1, "errors": 0, "prompt_tokens": 12, "completion_tokens": 3,
                                           "reasks": 0, "budget_refusals": 0, "tokens_used": 15}


async def test_the_key_comes_from_the_env_mapping_as_a_bearer_token(ft, openai_server):
    openai_server.add(Answer("ok"))
    env = {"FAKE_OPENAI_KEY": "sk-test-123"}
    async with make_router(ft, backend(openai_server, api_key_env="FAKE_OPENAI_KEY"), env=env) as router:
        await router.complete("hi", agent="a")
    assert openai_server.seen[0].headers["authorization"] == "Bearer sk-test-123"


async def test_temperature_and_grammar_are_sent_only_where_they_belong(ft, openai_server, openai_server_2):
    openai_server.add(Answer("plain"))
    openai_server_2.add(Answer("<Sum/>"))
    plain = backend(openai_server, "plain", models=("m",))
    grammar = backend(openai_server_2, "llamacpp-server", models=("g",), grammar=True)
    async with make_router(ft, plain, grammar) as router:
        await router.complete("hi", agent="a", model="m", grammar='root ::= "x"')
        await router.complete("hi", agent="a", model="g", grammar='root ::= "x"', temperature=0.0)
    assert set(openai_server.seen[0].body) == {"model", "messages", "max_tokens"}
    assert openai_server_2.seen[0].body["grammar"] == 'root ::= "x"'
    assert openai_server_2.seen[0].body["temperature"] == 0.0


# -- error classes and their retry rules --------------------------------------------------


@pytest.mark.parametrize("status", [400, 422])
async def test_a_request_error_is_never_retried_anywhere(ft, openai_server, openai_server_2, status):
    openai_server.add(Fail(status, message="max_tokens is too large"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b")) as router:
        with pytest.raises(LlmRequestError) as caught:
            await router.complete("hi", agent="x")
        status_after = router.status()
    assert caught.value.code == "llm-error"
    assert f"HTTP {status}" in str(caught.value) and "max_tokens is too large" in str(caught.value)
    assert len(openai_server.seen) == 1 and openai_server_2.seen == []
    assert ft.sleeps == []
    assert status_after["backends"]["a"]["cooldown_until"] is None
    assert status_after["agents"]["x"]["errors"] == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_backend_refusal_is_not_retried_there_but_moves_to_the_next_backend(
        ft, openai_server, openai_server_2, status):
    openai_server.add(Fail(status))
    openai_server_2.add(Answer("from b"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b")) as router:
        answer = await router.complete("hi", agent="x")
    assert answer.backend == "b"
    assert len(openai_server.seen) == 1 and len(openai_server_2.seen) == 1
    assert ft.sleeps == []


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_backend_refusal_with_no_other_backend_is_a_request_error(ft, openai_server, status):
    openai_server.add(Fail(status))
    async with make_router(ft, backend(openai_server)) as router:
        with pytest.raises(LlmRequestError, match=f"HTTP {status}"):
            await router.complete("hi", agent="x")
    assert len(openai_server.seen) == 1 and ft.sleeps == []


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 529])
async def test_a_transient_status_is_retried_after_the_cooldown(ft, openai_server, status):
    openai_server.add(Fail(status), Answer("second time lucky"))
    async with make_router(ft, backend(openai_server)) as router:
        answer = await router.complete("hi", agent="x")
        status_after = router.status()["backends"]["a"]
    assert answer.text == "second time lucky"
    assert len(openai_server.seen) == 2
    assert ft.sleeps == [1.0]  # the first cooldown (1 s) is longer than the first backoff (at most 0.5 s)
    assert (status_after["requests"], status_after["errors"], status_after["retries"]) == (2, 1, 1)
    assert f"HTTP {status}" in status_after["last_error"]


async def test_connection_errors_are_retried_and_nothing_sleeps_after_the_last_attempt(ft):
    dead = BackendConfig(name="dead", provider="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1")
    async with make_router(ft, dead, retries=2) as router:  # two retries: three attempts
        with pytest.raises(LlmUnavailable) as caught:
            await router.complete("hi", agent="x")
    assert caught.value.code == "llm-unavailable"
    assert "no answer after 3 attempts" in str(caught.value) and "dead: connection failed" in str(caught.value)
    assert len(ft.sleeps) == 2  # between attempts 1-2 and 2-3, none after the third
    assert ft.sleeps[0] == 1.0 and ft.sleeps[1] == 2.0  # the cooldown doubles with each consecutive failure


async def test_a_timeout_is_retried_and_the_slow_request_is_abandoned(ft, openai_server):
    openai_server.add(Answer("too late", delay=GUARD), Answer("in time"))
    async with make_router(ft, backend(openai_server, timeout_s=0.3)) as router:
        answer = await router.complete("hi", agent="x")
    assert answer.text == "in time"
    await asyncio.wait_for(openai_server.seen[0].disconnected.wait(), GUARD)


@pytest.mark.parametrize("raw", [
    Raw(200, b"this is not json"),
    Raw(200, b'{"choices": []}'),
    Raw(200, b'{"choices": [{"message": {"content": null}}]}'),
    Raw(200, b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": -1, "completion_tokens": 1}}'),
])
async def test_a_malformed_answer_is_retried(ft, openai_server, raw):
    openai_server.add(raw, Answer("well formed"))
    async with make_router(ft, backend(openai_server)) as router:
        answer = await router.complete("hi", agent="x")
        last_error = router.status()["backends"]["a"]["last_error"]
    assert answer.text == "well formed"
    assert last_error.startswith("malformed answer")


# -- Retry-After ----------------------------------------------------------------------------


async def test_retry_after_in_seconds_is_honoured(ft, openai_server):
    openai_server.add(Fail(429, retry_after="3"), Answer("ok"))
    async with make_router(ft, backend(openai_server)) as router:
        await router.complete("hi", agent="x")
    assert ft.sleeps == [3.0]


async def test_retry_after_as_an_http_date_is_honoured(ft, openai_server):
    when = datetime.fromtimestamp(ft.wall() + 5, tz=timezone.utc)
    openai_server.add(Fail(503, retry_after=format_datetime(when, usegmt=True)), Answer("ok"))
    async with make_router(ft, backend(openai_server)) as router:
        await router.complete("hi", agent="x")
    assert ft.sleeps == [5.0]


async def test_an_unparseable_retry_after_does_not_change_the_classification(ft, openai_server):
    openai_server.add(Fail(429, retry_after="after lunch"), Answer("ok"))
    async with make_router(ft, backend(openai_server)) as router:
        answer = await router.complete("hi", agent="x")
    assert answer.text == "ok" and ft.sleeps == [1.0]


async def test_retry_after_zero_still_backs_off(ft, openai_server):
    openai_server.add(Fail(503, retry_after="0"), Answer("ok"))
    async with make_router(ft, backend(openai_server)) as router:
        await router.complete("hi", agent="x")
    assert len(ft.sleeps) == 1 and 0.25 <= ft.sleeps[0] <= 0.5  # the first backoff: 0.5 s times 0.5-1


async def test_a_429_on_the_last_attempt_does_not_sleep(ft, openai_server):
    openai_server.add(Fail(429, retry_after="2"), Fail(429, retry_after="2"))
    async with make_router(ft, backend(openai_server), retries=1) as router:
        with pytest.raises(LlmUnavailable, match="no answer after 2 attempts.*HTTP 429"):
            await router.complete("hi", agent="x")
    assert ft.sleeps == [2.0]
    assert len(openai_server.seen) == 2


async def test_a_retry_after_longer_than_max_wait_ends_the_request_instead_of_sleeping(ft, openai_server):
    openai_server.add(Fail(429, retry_after="45"))
    async with make_router(ft, backend(openai_server)) as router:
        with pytest.raises(LlmUnavailable, match=r"would have to wait 45\.0 s"):
            await router.complete("hi", agent="x")
    assert ft.sleeps == [] and len(openai_server.seen) == 1


# -- strategies, models, cooldowns ------------------------------------------------------------


async def test_failover_skips_a_cooling_backend_and_shows_the_cooldown_in_status(ft, openai_server, openai_server_2):
    openai_server.add(Fail(500), Answer("a is back"))
    openai_server_2.add(Answer("b once"), Answer("b twice"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b")) as router:
        first = await router.complete("hi", agent="x")
        cooling = router.status()["backends"]["a"]
        second = await router.complete("hi", agent="x")  # a is still cooling down: skipped
        ft.now += 1.5  # a's cooldown (1 s) is over
        third = await router.complete("hi", agent="x")
        after = router.status()["backends"]["a"]
    assert [first.backend, second.backend, third.backend] == ["b", "b", "a"]
    assert ft.sleeps == []  # failing over to a ready backend does not pause
    expected = datetime.fromtimestamp(ft.wall() - 1.5 + 1.0, tz=timezone.utc).isoformat(timespec="milliseconds")
    assert cooling["cooldown_until"] == expected.replace("+00:00", "Z")
    assert cooling["cooldowns"] == 1 and "HTTP 500" in cooling["last_error"]
    assert after["cooldown_until"] is None


async def test_when_every_backend_is_cooling_a_request_waits_for_the_first_back(ft, openai_server, openai_server_2):
    openai_server.add(Fail(429, retry_after="4"), Answer("a"))
    openai_server_2.add(Fail(429, retry_after="2"), Answer("b"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b")) as router:
        answer = await router.complete("hi", agent="x")
    assert answer.backend == "b"
    assert ft.sleeps == [2.0]


async def test_round_robin_takes_turns(ft, openai_server, openai_server_2):
    openai_server.add(Answer("a"), Answer("a"))
    openai_server_2.add(Answer("b"), Answer("b"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b"),
                           strategy="round-robin") as router:
        used = [(await router.complete("hi", agent="x")).backend for _ in range(4)]
    assert used == ["a", "b", "a", "b"]


async def test_least_loaded_picks_the_backend_with_fewest_requests_in_flight(ft, openai_server, openai_server_2):
    openai_server.add(Hang(), Answer("a"))
    openai_server_2.add(Answer("b"))
    async with make_router(ft, backend(openai_server, "a"), backend(openai_server_2, "b"),
                           strategy="least-loaded") as router:
        stuck = asyncio.create_task(router.complete("hi", agent="x"))
        while not openai_server.seen:
            await asyncio.sleep(0.005)
        assert router.status()["backends"]["a"]["in_flight"] == 1
        answer = await asyncio.wait_for(router.complete("hi", agent="x"), GUARD)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        then = await asyncio.wait_for(router.complete("hi", agent="x"), GUARD)  # a is idle again, and first
    assert answer.backend == "b" and then.backend == "a"


async def test_only_backends_serving_the_model_are_used(ft, openai_server, openai_server_2):
    openai_server.add(Fail(500), Answer("x"))
    openai_server_2.add(Answer("y"))
    async with make_router(ft, backend(openai_server, "a", models=("model-x",)),
                           backend(openai_server_2, "b", models=("model-y", "model-z"))) as router:
        assert (await router.complete("hi", agent="q", model="model-y")).backend == "b"
        with pytest.raises(LlmRequestError, match="no backend serves model 'model-w'.*a: model-x; b: model-y"):
            await router.complete("hi", agent="q", model="model-w")
        # a fails; b does not serve model-x, so the retry waits for a rather than going to b
        assert (await router.complete("hi", agent="q", model="model-x")).backend == "a"
    assert openai_server_2.seen[0].body["model"] == "model-y"
    assert len(openai_server_2.seen) == 1 and len(openai_server.seen) == 2
    assert ft.sleeps == [1.0]


async def test_without_a_model_the_backend_names_its_first(ft, openai_server):
    openai_server.add(Answer("ok"))
    async with make_router(ft, backend(openai_server, models=("first", "second"))) as router:
        answer = await router.complete("hi", agent="q")
    assert openai_server.seen[0].body["model"] == "first" and answer.model == "first"


# -- token buckets and slots -----------------------------------------------------------------


async def test_a_request_larger_than_the_bucket_is_refused_at_once(ft, openai_server):
    async with make_router(ft, backend(openai_server, rate_limit_tpm=1000)) as router:
        with pytest.raises(RequestTooLarge) as caught:
            await router.complete("x" * 400, agent="q", max_tokens=950)
    assert caught.value.code == "llm-too-large"
    assert "1050 tokens" in str(caught.value) and "rate_limit_tpm: 1000" in str(caught.value)
    assert openai_server.seen == [] and ft.sleeps == []


async def test_a_request_too_large_for_one_bucket_goes_to_a_backend_it_fits(ft, openai_server, openai_server_2):
    openai_server_2.add(Answer("roomy"))
    async with make_router(ft, backend(openai_server, "small", rate_limit_tpm=100),
                           backend(openai_server_2, "large", rate_limit_tpm=100_000)) as router:
        answer = await router.complete("hi", agent="q", max_tokens=500)
    assert answer.backend == "large" and openai_server.seen == []


async def test_the_bucket_is_charged_the_real_usage(ft, openai_server):
    openai_server.add(Answer("ok", prompt_tokens=30, completion_tokens=20))
    async with make_router(ft, backend(openai_server, rate_limit_tpm=6000)) as router:
        await router.complete("hi", agent="q", max_tokens=1000)
        assert router.status()["backends"]["a"]["tokens_available"] == 6000 - 50


async def test_a_request_waits_for_bucket_tokens(ft, openai_server):
    openai_server.add(Answer("one", prompt_tokens=500, completion_tokens=100), Answer("two"))
    async with make_router(ft, backend(openai_server, rate_limit_tpm=600)) as router:  # 10 tokens a second
        await router.complete("hi", agent="q", max_tokens=100)  # 600 spent: the bucket is empty
        await router.complete("hi", agent="q", max_tokens=99)  # needs 100: ten seconds of refill
    assert ft.sleeps == [pytest.approx(10.0)]


# -- budgets ----------------------------------------------------------------------------------


async def test_the_conversation_budget_is_refused_before_sending(ft, openai_server):
    openai_server.add(Answer("ok", prompt_tokens=40, completion_tokens=30))
    policy = BudgetPolicy(tokens_per_conversation=300)
    async with make_router(ft, backend(openai_server)) as router:
        await router.complete("hi", agent="q", conversation="c1", max_tokens=200, budget=policy)  # 70 used
        with pytest.raises(BudgetExceeded) as caught:
            await router.complete("x" * 40, agent="q", conversation="c1", max_tokens=225, budget=policy)
        assert router.tokens_used(conversation="c1") == 70
        status = router.status()["agents"]["q"]
        router.forget_conversation("c1")
        assert router.tokens_used(conversation="c1") == 0
    assert caught.value.code == "budget"
    assert "300 tokens per conversation: 70 used" in str(caught.value)
    assert "estimated prompt 10 + max_tokens 225" in str(caught.value)
    assert len(openai_server.seen) == 1  # the refused request was never sent
    assert status["budget_refusals"] == 1 and status["requests"] == 1


async def test_the_agent_budget_counts_across_conversations(ft, openai_server):
    openai_server.add(Answer("ok", prompt_tokens=50, completion_tokens=50))
    policy = BudgetPolicy(tokens_per_agent=250)
    async with make_router(ft, backend(openai_server)) as router:
        await router.complete("hi", agent="q", conversation="c1", max_tokens=100, budget=policy)
        with pytest.raises(BudgetExceeded, match="250 tokens per run: 100 used"):
            await router.complete("hi", agent="q", conversation="c2", max_tokens=160, budget=policy)
        assert router.tokens_used(agent="q") == 100
    assert len(openai_server.seen) == 1


async def test_concurrent_requests_cannot_all_pass_the_budget_check(ft, openai_server):
    openai_server.add(Hang())
    policy = BudgetPolicy(tokens_per_conversation=150)
    async with make_router(ft, backend(openai_server)) as router:
        first = asyncio.create_task(router.complete("hi", agent="q", conversation="c", max_tokens=100, budget=policy))
        while not openai_server.seen:
            await asyncio.sleep(0.005)
        with pytest.raises(BudgetExceeded, match="101 reserved by requests in flight"):
            await router.complete("hi", agent="q", conversation="c", max_tokens=100, budget=policy)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert router.tokens_used(conversation="c") == 0  # cancelled before any text: nothing counted


# -- cancellation -------------------------------------------------------------------------------


async def test_cancelling_the_caller_aborts_the_http_request_and_leaks_nothing(ft, openai_server):
    openai_server.add(Hang(), Answer("after"))
    async with make_router(ft, backend(openai_server, max_concurrent=1, rate_limit_tpm=10_000)) as router:
        task = asyncio.create_task(router.complete("hi", agent="q", conversation="c", max_tokens=100))
        while not openai_server.seen:
            await asyncio.sleep(0.005)
        waiting = asyncio.create_task(router.complete("hi", agent="q", max_tokens=100))  # waits for the one slot
        await asyncio.sleep(0.05)
        assert router.status()["backends"]["a"]["in_flight"] == 2
        waiting.cancel()
        task.cancel()
        for cancelled in (waiting, task):
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        await asyncio.wait_for(openai_server.seen[0].disconnected.wait(), GUARD)
        status = router.status()["backends"]["a"]
        assert status["in_flight"] == 0
        assert status["tokens_available"] == 10_000 - 101  # the sent one stays charged; the waiting one gave back
        answer = await asyncio.wait_for(router.complete("hi", agent="q"), GUARD)  # the slot is free again
    assert answer.text == "after"
    assert len(openai_server.seen) == 2


async def test_aclose_closes_the_http_clients(ft, openai_server):
    router = make_router(ft, backend(openai_server))
    provider = router._backends[0].provider
    await router.aclose()
    assert provider._client.is_closed
    with pytest.raises(LlmUnavailable, match="closed"):
        await router.complete("hi", agent="q")


async def test_arguments_that_are_not_a_request_are_refused(ft, openai_server):
    async with make_router(ft, backend(openai_server)) as router:
        with pytest.raises(ValueError, match="no messages"):
            await router.complete([], agent="q")
        with pytest.raises(ValueError, match="role 'tool'"):
            await router.complete([{"role": "tool", "content": "x"}], agent="q")
        with pytest.raises(ValueError, match="max_tokens"):
            await router.complete("hi", agent="q", max_tokens=0)
    assert openai_server.seen == []
