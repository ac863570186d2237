"""The `llm:` sections of organism.yaml, checked with the config's `Checker`, so that
every mistake is reported with the others as `FILE:LINE: what is wrong`.

- `load_llm_section(check, node, env)`: the top-level `llm:` (strategy, retries,
  backends); `env` is the environment after `.env` was loaded, used only to check that
  each `api_key_env` names a variable that is set (its value is not kept);
- `load_agent_llm(check, node)`: a listener's `llm:` block;
- `check_models(check, llm, agents)`: every agent's model is served by some backend,
  and agents with `llm:` blocks have a top-level `llm:` section to use.

Rules, each a located error: unknown keys (listing the known ones); a provider not in
`openai | anthropic | replay | llama-cpp`; duplicate backend names; a key that belongs
to another provider; an API key written in the file (`api_key:`; keys go in the
environment, named by `api_key_env`); an `api_key_env` variable that is not set;
`anthropic` without `api_key_env`; `openai` without `base_url`; `replay` without
`answers`; `llama-cpp` without `model_path`, with a model file that is not there, or
without llama-cpp-python installed (naming the `[local]` extra); `grammar: true` on
anything but `openai`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from agentserver.config import Checker
from agentserver.llm.budget import BudgetPolicy
from agentserver.llm.providers.llamacpp import LOCAL_EXTRA_HINT, llama_cpp_missing, resolve_model_path
from agentserver.llm.settings import (
    PROVIDERS,
    STRATEGIES,
    AgentLlmConfig,
    BackendConfig,
    LlmConfig,
    ReplayAnswer,
    Strategy,
)

__all__ = ["load_llm_section", "load_agent_llm", "check_models", "LlmConfig", "BackendConfig", "AgentLlmConfig"]

_LLM_KEYS = {"strategy", "retries", "backends"}
_COMMON_KEYS = {"name", "provider", "models", "max_concurrent", "rate_limit_tpm", "timeout_s"}
_PROVIDER_KEYS = {
    "openai": {"base_url", "base_url_env", "api_key_env", "grammar"},
    "anthropic": {"base_url", "base_url_env", "api_key_env"},
    "replay": {"answers"},
    "llama-cpp": {"model_path", "n_ctx", "n_threads"},
}
_BACKEND_KEYS = _COMMON_KEYS.union(*_PROVIDER_KEYS.values())
_SECRET_KEYS = {"api_key", "key", "token", "secret", "password"}
_AGENT_KEYS = {"model", "prompt", "reply_class", "max_tokens", "temperature", "max_reasks", "budget", "stream"}
_BUDGET_KEYS = {"tokens_per_conversation", "tokens_per_agent"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def load_llm_section(check: Checker, node: yaml.Node, env: Mapping[str, str]) -> LlmConfig | None:
    """The top-level `llm:` section; None if it is not even a mapping. Problems are
    reported to `check`; the config returned then holds what could be read."""
    if not isinstance(node, yaml.MappingNode):
        check.problem(node, "llm must be a mapping (strategy, retries, backends)")
        return None
    fields = check.mapping(node, "llm", _LLM_KEYS)
    strategy: Strategy = "failover"
    if "strategy" in fields:
        value = check.scalar(fields["strategy"][1], "llm.strategy", str)
        if value is not None and value not in STRATEGIES:
            check.problem(fields["strategy"][1], f"llm.strategy must be one of {', '.join(STRATEGIES)}, not {value!r}")
        elif value is not None:
            strategy = value
    retries = 3
    if "retries" in fields:
        value = check.scalar(fields["retries"][1], "llm.retries (attempts after the first)", int)
        if value is not None and value < 0:
            check.problem(fields["retries"][1], f"llm.retries (attempts after the first) must be 0 or more, not {value}")
        elif value is not None:
            retries = value
    backends: list[BackendConfig] = []
    if "backends" not in fields:
        check.problem(node, "llm needs backends: (a list of model servers)")
    elif not isinstance(fields["backends"][1], yaml.SequenceNode) or not fields["backends"][1].value:
        check.problem(fields["backends"][1], "llm.backends must be a non-empty list")
    else:
        seen: dict[str, int] = {}
        for item in fields["backends"][1].value:
            backend = _backend(check, item, env)
            if backend is None:
                continue
            if backend.name in seen:
                check.problem(item, f"duplicate backend name {backend.name!r} (first at line {seen[backend.name]})")
                continue
            seen[backend.name] = backend.line
            backends.append(backend)
    return LlmConfig(backends=tuple(backends), strategy=strategy, retries=retries, line=node.start_mark.line + 1)


def _backend(check: Checker, node: yaml.Node, env: Mapping[str, str]) -> BackendConfig | None:
    fields = check.mapping(node, "an llm backend", _BACKEND_KEYS | _SECRET_KEYS)
    if not isinstance(node, yaml.MappingNode):
        return None
    line = node.start_mark.line + 1
    for secret in sorted(_SECRET_KEYS & fields.keys()):
        check.problem(fields[secret][0], f"{secret!r}: API keys are not accepted in the config file; put the key in "
                                         "an environment variable (or .env) and name it with api_key_env")
    if "name" not in fields:
        check.problem(node, "llm backend is missing 'name'")
        return None
    name = check.name(fields["name"][1], "backend name")
    if name is None:
        return None
    label = f"backend {name!r}"
    if "provider" not in fields:
        check.problem(node, f"{label} is missing 'provider' (one of {', '.join(PROVIDERS)})")
        return None
    provider = check.scalar(fields["provider"][1], f"{label} provider", str)
    if provider is None:
        return None
    if provider not in PROVIDERS:
        check.problem(fields["provider"][1], f"{label}: unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
        return None
    for key in sorted(fields.keys() - _COMMON_KEYS - _SECRET_KEYS - _PROVIDER_KEYS[provider]):
        owners = " or ".join(p for p in PROVIDERS if key in _PROVIDER_KEYS[p])
        check.problem(fields[key][0], f"{label}: {key!r} is for provider {owners}, not {provider}")
    values: dict[str, object] = {}

    def number(key: str, kind: type) -> None:
        if key in fields and key in _COMMON_KEYS | _PROVIDER_KEYS[provider]:
            value = check.scalar(fields[key][1], f"{label} {key}", kind, positive=True)
            if value is not None:
                values[key] = value

    for key in ("max_concurrent", "rate_limit_tpm", "n_ctx", "n_threads"):
        number(key, int)
    number("timeout_s", float)

    models: list[str] = []
    if "models" in fields:
        models_node = fields["models"][1]
        if not isinstance(models_node, yaml.SequenceNode):
            check.problem(models_node, f"{label} models must be a list of model names (empty: any model)")
        else:
            for item in models_node.value:
                model = check.scalar(item, f"{label} model name", str)
                if model is not None and model not in models:
                    models.append(model)

    def env_name(key: str) -> str | None:
        """The variable `key` names (api_key_env, base_url_env), if it is a name and set."""
        if key not in fields or provider not in ("openai", "anthropic"):
            return None
        name = check.scalar(fields[key][1], f"{label} {key}", str)
        if name is not None and not _ENV_NAME.match(name):
            check.problem(fields[key][1], f"{label} {key} must be the name of an environment variable, not {name!r}")
            return None
        if name is not None and not env.get(name):
            check.problem(fields[key][1], f"{label}: the environment variable {name} ({key}) is not set; put it "
                                          "in .env in the working directory or export it")
        return name

    base_url = None
    base_url_env = env_name("base_url_env")  # the server's URL from .env: one YAML for every deployment
    if "base_url" in fields and "base_url_env" in fields:
        check.problem(fields["base_url_env"][0], f"{label}: give base_url or base_url_env, not both")
    elif "base_url" in fields and provider in ("openai", "anthropic"):
        base_url = check.scalar(fields["base_url"][1], f"{label} base_url", str)
    elif base_url_env is not None:
        base_url = env.get(base_url_env) or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        where = fields["base_url"][1] if "base_url" in fields else fields["base_url_env"][1]
        check.problem(where, f"{label} base_url must start with http:// or https://, not {base_url!r}")
        base_url = None
    if provider == "openai" and "base_url" not in fields and "base_url_env" not in fields:
        check.problem(node, f"{label} (provider openai) needs base_url, for instance http://127.0.0.1:8080/v1 "
                            "or https://api.openai.com/v1 (or base_url_env: a variable in .env that holds it)")

    api_key_env = env_name("api_key_env")
    if provider == "anthropic" and "api_key_env" not in fields:
        check.problem(node, f"{label} (provider anthropic) needs api_key_env: the environment variable that holds "
                            "the API key, for instance ANTHROPIC_API_KEY")

    grammar = False
    if "grammar" in fields and provider == "openai":
        grammar = bool(check.scalar(fields["grammar"][1], f"{label} grammar", bool))

    answers: list[ReplayAnswer] = []
    if provider == "replay":
        if "answers" not in fields:
            check.problem(node, f"{label} (provider replay) needs answers: a list of scripted answers")
        else:
            answers = _answers(check, fields["answers"][1], label)

    model_path = None
    if provider == "llama-cpp":
        if llama_cpp_missing():
            check.problem(fields["provider"][1], f"{label} (provider llama-cpp) needs llama-cpp-python: "
                                                 f"{LOCAL_EXTRA_HINT}")
        if "model_path" not in fields:
            check.problem(node, f"{label} (provider llama-cpp) needs model_path: a GGUF file, or "
                                "pkg:PACKAGE/FILE.gguf for one inside an installed package")
        else:
            model_path = check.scalar(fields["model_path"][1], f"{label} model_path", str)
            if model_path is not None:
                try:
                    resolve_model_path(model_path)
                except ValueError as exc:
                    check.problem(fields["model_path"][1], f"{label} model_path {exc}")

    return BackendConfig(
        name=name, provider=provider, base_url=base_url, api_key_env=api_key_env, models=tuple(models),
        grammar=grammar, answers=tuple(answers), model_path=model_path, line=line,
        **values,  # type: ignore[arg-type]  # each checked as its field's type above
    )


def _answers(check: Checker, node: yaml.Node, label: str) -> list[ReplayAnswer]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        check.problem(node, f"{label} answers must be a non-empty list of texts or {{text, when}} mappings")
        return []
    answers: list[ReplayAnswer] = []
    for item in node.value:
        if isinstance(item, yaml.ScalarNode):
            text = check.scalar(item, f"{label} answer", str)
            if text is not None:
                answers.append(ReplayAnswer(text))
            continue
        fields = check.mapping(item, f"{label} answer", {"text", "when"})
        if not fields:
            continue
        if "text" not in fields:
            check.problem(item, f"{label} answer needs text")
            continue
        text = check.scalar(fields["text"][1], f"{label} answer text", str)
        when = check.scalar(fields["when"][1], f"{label} answer when", str) if "when" in fields else None
        if when == "":
            check.problem(fields["when"][1], f"{label} answer when must not be empty (leave it out instead)")
            continue
        if text is not None and ("when" not in fields or when is not None):
            answers.append(ReplayAnswer(text, when))
    return answers


def load_agent_llm(check: Checker, node: yaml.Node) -> AgentLlmConfig:
    """A listener's `llm:` block. `prompt` and `reply_class` may be left out here (a
    hand-written handler calling `meta.llm` needs neither); whoever builds the agent
    loop requires them."""
    fields = check.mapping(node, "a listener's llm", _AGENT_KEYS)
    line = node.start_mark.line + 1
    values: dict[str, object] = {}
    model_line = line
    if "model" in fields:
        values["model"] = check.scalar(fields["model"][1], "llm.model", str)
        model_line = fields["model"][1].start_mark.line + 1
    if "prompt" in fields:
        values["prompt"] = check.scalar(fields["prompt"][1], "llm.prompt", str)
    if "reply_class" in fields:
        reply_class = check.resolve(fields["reply_class"][1], "llm.reply_class")
        if reply_class is not None and not (
                isinstance(reply_class, type) and hasattr(reply_class, "xsd") and hasattr(reply_class, "parse")):
            check.problem(fields["reply_class"][1], f"llm.reply_class {reply_class!r} is not an @xmlify dataclass")
        elif reply_class is not None:
            values["reply_class"] = reply_class
    if "max_tokens" in fields:
        values["max_tokens"] = check.scalar(fields["max_tokens"][1], "llm.max_tokens", int, positive=True)
    if "temperature" in fields:
        temperature = check.scalar(fields["temperature"][1], "llm.temperature", float)
        if temperature is not None and not 0 <= temperature <= 2:
            check.problem(fields["temperature"][1], f"llm.temperature must be between 0 and 2, not {temperature}")
        else:
            values["temperature"] = temperature
    if "max_reasks" in fields:
        reasks = check.scalar(fields["max_reasks"][1], "llm.max_reasks", int)
        if reasks is not None and reasks < 0:
            check.problem(fields["max_reasks"][1], f"llm.max_reasks must be 0 or more, not {reasks}")
        else:
            values["max_reasks"] = reasks
    if "stream" in fields:
        values["stream"] = check.scalar(fields["stream"][1], "llm.stream", bool)
    if "budget" in fields:
        budget = check.mapping(fields["budget"][1], "llm.budget", _BUDGET_KEYS)
        limits = {key: check.scalar(value, f"llm.budget.{key}", int, positive=True)
                  for key, (_, value) in budget.items()}
        values["budget"] = BudgetPolicy(**limits)
    present = {key: value for key, value in values.items() if value is not None}
    return AgentLlmConfig(line=line, model_line=model_line, **present)  # type: ignore[arg-type]  # checked above


def check_models(check: Checker, llm: LlmConfig | None, agents: list[tuple[AgentLlmConfig, yaml.Node]]) -> None:
    """Every agent's model is served by a backend; agents need a top-level `llm:`."""
    for agent, node in agents:
        if llm is None:
            check.problem(node, "this listener has an llm: block but there is no top-level llm: section declaring "
                                "backends")
            continue
        if agent.model is None or not llm.backends:
            continue
        if not any(backend.serves(agent.model) for backend in llm.backends):
            served = "; ".join(f"{b.name}: {', '.join(b.models)}" for b in llm.backends)
            check.problem_at(agent.model_line, f"model {agent.model!r} is served by no backend ({served}; a backend "
                                               "with no models: list serves any model)")
