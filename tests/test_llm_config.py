"""The `llm:` sections of organism.yaml: what a good one gives, and every rule's
located error (`FILE:LINE: message`)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from agentserver.config import Checker
from agentserver.llm import AgentLlmConfig, BackendConfig, BudgetPolicy, LlmConfig, ReplayAnswer
from agentserver.llm import config as llm_config
from agentserver.llm.config import check_models, load_agent_llm, load_llm_section


def compose(text: str) -> yaml.Node:
    node = yaml.compose(textwrap.dedent(text))
    assert node is not None
    return node


def section(text: str, env: dict[str, str] | None = None) -> tuple[LlmConfig | None, list[str]]:
    check = Checker("test.yaml")
    config = load_llm_section(check, compose(text), env or {})
    return config, check.problems


def agent(text: str) -> tuple[AgentLlmConfig, list[str]]:
    check = Checker("test.yaml")
    config = load_agent_llm(check, compose(text))
    return config, check.problems


def problem(text: str, env: dict[str, str] | None = None) -> str:
    _, problems = section(text, env)
    assert len(problems) == 1, problems
    return problems[0]


def test_a_full_section_is_read():
    config, problems = section("""\
        strategy: round-robin
        retries: 5
        backends:
          - name: local
            provider: openai
            base_url: http://127.0.0.1:8080/v1
            api_key_env: OPENAI_API_KEY
            models: [qwen2.5-7b, llama3]
            max_concurrent: 4
            rate_limit_tpm: 200000
            grammar: true
            timeout_s: 30
          - name: claude
            provider: anthropic
            api_key_env: ANTHROPIC_API_KEY
            models: [claude-sonnet-4-5]
          - name: script
            provider: replay
            answers:
              - "<A/>"
              - {when: "<Add>", text: "<Sum/>"}
        """, {"OPENAI_API_KEY": "k1", "ANTHROPIC_API_KEY": "k2"})
    assert problems == []
    assert config is not None
    assert (config.strategy, config.retries) == ("round-robin", 5)
    local, claude, script = config.backends
    assert local == BackendConfig(name="local", provider="openai", base_url="http://127.0.0.1:8080/v1",
                                  api_key_env="OPENAI_API_KEY", models=("qwen2.5-7b", "llama3"), max_concurrent=4,
                                  rate_limit_tpm=200000, grammar=True, timeout_s=30.0, line=4)
    assert claude.base_url is None and claude.max_concurrent == 8 and claude.rate_limit_tpm is None
    assert script.answers == (ReplayAnswer("<A/>"), ReplayAnswer("<Sum/>", when="<Add>"))
    assert "k1" not in repr(config) and "k2" not in repr(config)  # keys are not kept


def test_defaults():
    config, problems = section("""\
        backends:
          - {name: s, provider: replay, answers: [x]}
        """)
    assert problems == [] and config is not None
    assert (config.strategy, config.retries, config.backends[0].timeout_s) == ("failover", 3, 120.0)


@pytest.mark.parametrize("text, expected", [
    ("strategy: random\nbackends: [{name: s, provider: replay, answers: [x]}]\n",
     "test.yaml:1: llm.strategy must be one of failover, round-robin, least-loaded, not 'random'"),
    ("retries: -1\nbackends: [{name: s, provider: replay, answers: [x]}]\n",
     "test.yaml:1: llm.retries (attempts after the first) must be 0 or more, not -1"),
    ("strategy: failover\n", "test.yaml:1: llm needs backends: (a list of model servers)"),
    ("backends: []\n", "test.yaml:1: llm.backends must be a non-empty list"),
    ("timeout: 3\nbackends: [{name: s, provider: replay, answers: [x]}]\n",
     "test.yaml:1: unknown key 'timeout' in llm (known keys: backends, retries, strategy)"),
])
def test_section_errors(text, expected):
    assert problem(text) == expected


def test_an_unknown_provider_lists_the_known_ones():
    assert problem("""\
        backends:
          - name: x
            provider: xai
        """) == "test.yaml:3: backend 'x': unknown provider 'xai' (known: openai, anthropic, replay, llama-cpp)"


def test_duplicate_backend_names():
    assert problem("""\
        backends:
          - {name: s, provider: replay, answers: [x]}
          - {name: s, provider: replay, answers: [y]}
        """) == "test.yaml:3: duplicate backend name 's' (first at line 2)"


def test_an_unset_key_variable_is_named_with_where_to_put_it():
    assert problem("""\
        backends:
          - name: oa
            provider: openai
            base_url: https://api.openai.com/v1
            api_key_env: OPENAI_API_KEY
        """, {"OTHER": "x", "OPENAI_API_KEY": ""}) == (
        "test.yaml:5: backend 'oa': the environment variable OPENAI_API_KEY (api_key_env) is not set; put it in "
        ".env in the working directory or export it")


def test_anthropic_needs_a_key_variable():
    assert problem("""\
        backends:
          - name: claude
            provider: anthropic
        """) == ("test.yaml:2: backend 'claude' (provider anthropic) needs api_key_env: the environment variable "
                 "that holds the API key, for instance ANTHROPIC_API_KEY")


def test_openai_needs_a_base_url():
    assert problem("""\
        backends:
          - name: oa
            provider: openai
        """).startswith("test.yaml:2: backend 'oa' (provider openai) needs base_url")


def test_replay_needs_answers():
    assert problem("""\
        backends:
          - name: s
            provider: replay
        """) == "test.yaml:2: backend 's' (provider replay) needs answers: a list of scripted answers"
    assert problem("""\
        backends:
          - name: s
            provider: replay
            answers:
              - {when: "<A>"}
        """) == "test.yaml:5: backend 's' answer needs text"


@pytest.mark.parametrize("provider_lines, key_line, expected", [
    ("provider: openai\n    base_url: http://h/v1", "answers: [x]", "'answers' is for provider replay, not openai"),
    ("provider: replay\n    answers: [x]", "base_url: http://h", "'base_url' is for provider openai or anthropic, not replay"),
    ("provider: anthropic\n    api_key_env: K", "grammar: true", "'grammar' is for provider openai, not anthropic"),
    ("provider: replay\n    answers: [x]", "model_path: m.gguf", "'model_path' is for provider llama-cpp, not replay"),
])
def test_keys_of_another_provider_are_errors(provider_lines, key_line, expected):
    text = f"backends:\n  - name: b\n    {provider_lines}\n    {key_line}\n"
    message = problem(text, {"K": "x"})
    assert message == f"test.yaml:{text.count(chr(10))}: backend 'b': {expected}"


def test_an_api_key_in_the_file_is_refused():
    assert problem("""\
        backends:
          - name: oa
            provider: openai
            base_url: http://127.0.0.1:8080/v1
            api_key: sk-in-the-yaml
        """) == ("test.yaml:5: 'api_key': API keys are not accepted in the config file; put the key in an "
                 "environment variable (or .env) and name it with api_key_env")


def test_an_unknown_backend_key_lists_the_known_ones():
    message = problem("""\
        backends:
          - {name: s, provider: replay, answers: [x], supported_models: [a]}
        """)
    assert message.startswith("test.yaml:2: unknown key 'supported_models' in an llm backend (known keys: answers,")


@pytest.mark.parametrize("line, expected", [
    ("max_concurrent: 0", "backend 's' max_concurrent must be greater than 0, not 0"),
    ("rate_limit_tpm: lots", "backend 's' rate_limit_tpm must be a int, not 'lots'"),
    ("timeout_s: -1", "backend 's' timeout_s must be greater than 0, not -1.0"),
    ("models: qwen", "backend 's' models must be a list of model names (empty: any model)"),
])
def test_backend_values_are_checked(line, expected):
    assert problem(f"backends:\n  - name: s\n    provider: replay\n    answers: [x]\n    {line}\n") == \
        f"test.yaml:5: {expected}"


def test_llama_cpp_needs_a_model_file(tmp_path, monkeypatch):
    monkeypatch.setattr(llm_config, "llama_cpp_missing", lambda: False)  # the extra installed or not: this is about the file
    assert problem("""\
        backends:
          - {name: local, provider: llama-cpp}
        """).startswith("test.yaml:2: backend 'local' (provider llama-cpp) needs model_path")
    missing = problem(f"""\
        backends:
          - name: local
            provider: llama-cpp
            model_path: {tmp_path}/nothing.gguf
        """)
    assert missing.startswith("test.yaml:4: backend 'local' model_path") and "no model file at" in missing
    assert problem("""\
        backends:
          - name: local
            provider: llama-cpp
            model_path: pkg:no_such_package_here/model.gguf
        """) == ("test.yaml:4: backend 'local' model_path 'pkg:no_such_package_here/model.gguf': package "
                 "'no_such_package_here' is not installed")


def test_llama_cpp_without_the_extra_names_it(tmp_path, monkeypatch):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(llm_config, "llama_cpp_missing", lambda: True)
    assert problem(f"""\
        backends:
          - name: local
            provider: llama-cpp
            model_path: {model}
        """) == ("test.yaml:3: backend 'local' (provider llama-cpp) needs llama-cpp-python: install the optional "
                 "extra: pip install 'agentserver[local]' (llama-cpp-python)")


def test_grammar_is_only_for_openai():
    assert problem("""\
        backends:
          - {name: s, provider: replay, answers: [x], grammar: true}
        """) == "test.yaml:2: backend 's': 'grammar' is for provider openai, not replay"


# -- a listener's llm: block ----------------------------------------------------------------


def test_an_agent_block_is_read():
    config, problems = agent("""\
        model: qwen2.5-7b
        prompt: You plan trips.
        reply_class: tests.organisms.Report
        max_tokens: 512
        temperature: 0.2
        max_reasks: 0
        budget: {tokens_per_conversation: 20000, tokens_per_agent: 100000}
        stream: false
        """)
    assert problems == []
    from tests.organisms import Report
    assert config == AgentLlmConfig(model="qwen2.5-7b", prompt="You plan trips.", reply_class=Report, max_tokens=512,
                                    temperature=0.2, max_reasks=0,
                                    budget=BudgetPolicy(tokens_per_conversation=20000, tokens_per_agent=100000),
                                    stream=False, line=1, model_line=1)


def test_an_agent_block_needs_little():
    config, problems = agent("model: m\n")
    assert problems == []
    assert (config.prompt, config.reply_class, config.max_tokens, config.max_reasks, config.stream) == (
        None, None, 1024, 2, True)
    assert config.budget == BudgetPolicy()


@pytest.mark.parametrize("text, expected", [
    ("reply_class: tests.organisms.Probe\n", "test.yaml:1: llm.reply_class <class 'tests.organisms.Probe'> is not an "
                                              "@xmlify dataclass"),
    ("reply_class: tests.no_such_module.Reply\n", "test.yaml:1: llm.reply_class 'tests.no_such_module.Reply': cannot "
                                                  "import 'tests.no_such_module': ModuleNotFoundError: No module named "
                                                  "'tests.no_such_module'"),
    ("temperature: 3\n", "test.yaml:1: llm.temperature must be between 0 and 2, not 3.0"),
    ("max_reasks: -1\n", "test.yaml:1: llm.max_reasks must be 0 or more, not -1"),
    ("max_tokens: 0\n", "test.yaml:1: llm.max_tokens must be greater than 0, not 0"),
    ("budget: {tokens_per_day: 5}\n", "test.yaml:1: unknown key 'tokens_per_day' in llm.budget (known keys: "
                                      "tokens_per_agent, tokens_per_conversation)"),
    ("budget: {tokens_per_agent: 0}\n", "test.yaml:1: llm.budget.tokens_per_agent must be greater than 0, not 0"),
    ("handler: x.y\n", "test.yaml:1: unknown key 'handler' in a listener's llm (known keys: budget, max_reasks, "
                       "max_tokens, model, prompt, reply_class, stream, temperature)"),
])
def test_agent_block_errors(text, expected):
    _, problems = agent(text)
    assert problems == [expected]


def test_every_agent_model_must_be_served_by_a_backend():
    llm, problems = section("""\
        backends:
          - {name: a, provider: replay, answers: [x], models: [m1]}
          - {name: b, provider: replay, answers: [x], models: [m2, m3]}
        """)
    assert problems == [] and llm is not None
    check = Checker("test.yaml")
    document = yaml.compose("- {model: m3}\n- model: m4\n- {max_tokens: 5}\n")
    agents = [(load_agent_llm(check, node), node) for node in document.value]
    check_models(check, llm, agents)
    assert check.problems == ["test.yaml:2: model 'm4' is served by no backend (a: m1; b: m2, m3; a backend with no "
                              "models: list serves any model)"]


def test_a_backend_without_models_serves_any_model():
    llm, _ = section("backends:\n  - {name: a, provider: replay, answers: [x]}\n")
    check = Checker("test.yaml")
    node = yaml.compose("model: whatever\n")
    check_models(check, llm, [(load_agent_llm(check, node), node)])
    assert check.problems == []


def test_an_agent_block_without_an_llm_section_is_an_error():
    check = Checker("test.yaml")
    node = yaml.compose("\n\nmodel: m\n")
    check_models(check, None, [(load_agent_llm(check, node), node)])
    assert check.problems == ["test.yaml:3: this listener has an llm: block but there is no top-level llm: section "
                              "declaring backends"]


def test_a_router_with_a_llama_backend_but_no_llama_cpp_names_the_extra(monkeypatch):
    from agentserver.llm import LlmConfigError, LlmRouter
    from agentserver.llm.providers import llamacpp

    monkeypatch.setattr(llamacpp, "llama_cpp_missing", lambda: True)
    config = LlmConfig(backends=(BackendConfig(name="local", provider="llama-cpp", model_path="m.gguf"),))
    with pytest.raises(LlmConfigError, match=r"needs llama-cpp-python: install the optional extra: pip install "
                                             r"'agentserver\[local\]'"):
        LlmRouter(config, env={})


def test_the_server_url_may_come_from_the_environment():
    text = """\
        backends:
          - name: server
            provider: openai
            base_url_env: LLM_BASE_URL
        """
    config, problems = section(text, {"LLM_BASE_URL": "http://127.0.0.1:9999/v1"})
    assert problems == [] and config.backends[0].base_url == "http://127.0.0.1:9999/v1"
    assert problem(text).startswith("test.yaml:4: backend 'server': the environment variable LLM_BASE_URL "
                                    "(base_url_env) is not set")
    assert "must start with http" in problem(text, {"LLM_BASE_URL": "ftp://x"})
    both = problem("""\
        backends:
          - name: server
            provider: openai
            base_url: http://127.0.0.1:1/v1
            base_url_env: LLM_BASE_URL
        """, {"LLM_BASE_URL": "http://127.0.0.1:2/v1"})
    assert "give base_url or base_url_env, not both" in both
