"""Providers: the ways to reach a model, one module each, imported only when a
backend uses them.

- `openai`: any OpenAI-compatible HTTP server;
- `anthropic`: Anthropic's Messages API;
- `replay`: scripted answers, for tests;
- `llama-cpp` (`llamacpp`): a GGUF model in this process (optional extra `[local]`).

`make_provider` builds the one a backend's config names.
"""

from __future__ import annotations

from typing import Callable

from agentserver.llm.providers.base import Provider
from agentserver.llm.settings import BackendConfig

__all__ = ["make_provider"]


def make_provider(backend: BackendConfig, *, api_key: str | None, wall_clock: Callable[[], float]) -> Provider:
    """The provider for `backend`. Raises `LlmConfigError` when it cannot be made
    (llama-cpp-python not installed) and ValueError for an unknown provider name."""
    if backend.provider == "openai":
        from agentserver.llm.providers.openai import OpenAIProvider
        return OpenAIProvider(backend, api_key, wall_clock=wall_clock)
    if backend.provider == "anthropic":
        from agentserver.llm.providers.anthropic import AnthropicProvider
        return AnthropicProvider(backend, api_key, wall_clock=wall_clock)
    if backend.provider == "replay":
        from agentserver.llm.providers.replay import ReplayProvider
        return ReplayProvider(backend)
    if backend.provider == "llama-cpp":
        from agentserver.llm.providers.llamacpp import LlamaCppProvider
        return LlamaCppProvider(backend)
    raise ValueError(f"backend {backend.name!r}: unknown provider {backend.provider!r}")
