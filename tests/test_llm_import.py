"""`agentserver.llm` is light to import: its own modules pull in none of YAML, lxml,
aiostream, xmlable, llama_cpp (nor httpx, until an HTTP backend is made).

The parent package's `__init__` is not this package's to keep light, so the check
runs in a fresh interpreter with `agentserver` stubbed as a bare namespace: what is
imported then is what `agentserver.llm` itself imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("yaml", "lxml", "aiostream", "xmlable", "llama_cpp", "numpy", "httpx", "aiohttp")

PROBE = """
import json, sys, types
stub = types.ModuleType("agentserver")
stub.__path__ = [{package!r}]
sys.modules["agentserver"] = stub
import agentserver.llm
from agentserver.llm import BackendConfig, LlmConfig, LlmRouter
before = [m for m in {heavy!r} if m in sys.modules]
router = LlmRouter(LlmConfig(backends=(BackendConfig(name="a", provider="openai", base_url="http://127.0.0.1:9/v1"),
                                       BackendConfig(name="b", provider="replay", answers=()))), env={{}})
after = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps([before, after]))
"""


def test_importing_the_package_imports_nothing_heavy():
    code = PROBE.format(package=str(ROOT / "agentserver"), heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout)
    assert before == []
    assert after == ["httpx"]  # made for the openai backend; still no YAML, XML or llama_cpp
