"""Model access for agents (DESIGN.md §12): a router over model backends, with
budgets, rate limits, retries, cooldowns, streaming and usage counters.

    async with LlmRouter(config, env=os.environ) as router:
        answer = await router.complete("Say hello", agent="greeter", model="qwen2.5-7b")
        print(answer.text, answer.usage.total, answer.backend)

Modules, one concept each:

- `types`: `Message`, `Usage`, `Completion`, and the errors (`LlmError` and kin);
- `settings`: the frozen config objects (`LlmConfig`, `BackendConfig`, `AgentLlmConfig`);
- `config`: building those from organism.yaml, with `FILE:LINE` errors (imports YAML);
- `router`: `LlmRouter`, strategies, retries, cooldowns, accounting;
- `budget`: `BudgetPolicy` and the token ledger; `bucket`: the per-backend token bucket;
- `providers`: `openai`, `anthropic`, `replay`, `llama-cpp` (each imported when used).

Importing this package costs the standard library and httpx: not YAML, lxml,
aiostream, xmlable or llama_cpp (`config` is imported by whoever loads YAML; the
llama-cpp provider imports llama_cpp when its model is first loaded).
"""

from agentserver.llm.budget import BudgetPolicy
from agentserver.llm.router import LlmRouter
from agentserver.llm.settings import AgentLlmConfig, BackendConfig, LlmConfig, ReplayAnswer
from agentserver.llm.types import (
    BudgetExceeded,
    Completion,
    LlmConfigError,
    LlmError,
    LlmInvalid,
    LlmRequestError,
    LlmUnavailable,
    Message,
    RequestTooLarge,
    Usage,
)

__all__ = [
    "LlmRouter",
    "LlmConfig",
    "BackendConfig",
    "AgentLlmConfig",
    "ReplayAnswer",
    "BudgetPolicy",
    "Message",
    "Usage",
    "Completion",
    "LlmError",
    "BudgetExceeded",
    "RequestTooLarge",
    "LlmUnavailable",
    "LlmRequestError",
    "LlmConfigError",
    "LlmInvalid",
]
