"""The replay provider: scripted answers chosen by `when`, else in order and cycling;
streamed in pieces; usage estimated. Through the router, as users' tests would."""

from __future__ import annotations

import pytest

from agentserver.llm import BackendConfig, LlmConfig, LlmRequestError, LlmRouter, Message, ReplayAnswer

SCRIPT = (
    ReplayAnswer("<Sum><Value>3</Value></Sum>", when="<Add>"),
    ReplayAnswer("first"),
    ReplayAnswer("<Product/>", when="<Multiply>"),
    ReplayAnswer("second"),
)


def make_router(*answers: ReplayAnswer) -> LlmRouter:
    backend = BackendConfig(name="script", provider="replay", answers=answers)
    return LlmRouter(LlmConfig(backends=(backend,)), env={})


async def test_plain_answers_come_in_order_and_cycle():
    async with make_router(*SCRIPT) as router:
        texts = [(await router.complete("next?", agent="a")).text for _ in range(5)]
    assert texts == ["first", "second", "first", "second", "first"]


async def test_when_picks_an_answer_by_the_last_user_message_without_using_a_turn():
    messages: list[Message] = [{"role": "system", "content": "<Multiply> is a peer"},
                               {"role": "user", "content": "<Multiply><A>2</A></Multiply>"},
                               {"role": "assistant", "content": "..."},
                               {"role": "user", "content": "<Add><A>1</A><B>2</B></Add>"}]
    async with make_router(*SCRIPT) as router:
        matched = await router.complete(messages, agent="a")
        plain = await router.complete("anything", agent="a")
        other = await router.complete("<Multiply><A>3</A></Multiply>", agent="a")
    assert matched.text == "<Sum><Value>3</Value></Sum>"  # only the last user message counts
    assert plain.text == "first"
    assert other.text == "<Product/>"


async def test_replay_streams_in_pieces_and_estimates_usage():
    pieces: list[str] = []
    async with make_router(ReplayAnswer("<Sum><Value>3</Value></Sum>")) as router:
        answer = await router.complete("x" * 40, agent="a", model="any-name", on_token=pieces.append)
        status = router.status()
    assert 1 < len(pieces) <= 4 and "".join(pieces) == answer.text
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 7)  # 27 characters: 7 tokens
    assert answer.backend == "script" and answer.model == "any-name"
    assert status["backends"]["script"]["requests"] == 1


async def test_no_matching_answer_is_a_request_error_naming_the_backend():
    async with make_router(ReplayAnswer("x", when="<Add>")) as router:
        with pytest.raises(LlmRequestError, match="replay backend 'script' has no answer"):
            await router.complete("<Multiply/>", agent="a")
