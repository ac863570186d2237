"""The soak of scripts/soak.py at a reduced size (it still runs in the default pytest run).

Four concurrent socket clients send a mix of valid, slow and invalid messages, each
with a window of unanswered messages, and read every answer. The script's own checks
must all pass; the main ones are repeated here so a failure says what broke.

Reduced size: 10,000 messages after a warm-up of 2,500 (the script's defaults are
50,000 after 5,000: `python scripts/soak.py`). The memory bound is the issue's: VmRSS
of the server process after the soak within 20 MiB of VmRSS after the warm-up.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from soak import Plan, render, soak  # noqa: E402

MESSAGES = 10_000
WARMUP = 2_500


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_keeps_the_books_and_the_memory_flat():
    figures = soak(MESSAGES, WARMUP, Plan(clients=4, window=32, invalid_every=10, slow_every=7, slow_seconds=0.002))
    print(render(figures))
    assert figures.problems == [], render(figures)
    assert figures.replies + figures.huhs == MESSAGES + WARMUP  # every message answered exactly once
    assert figures.huhs == figures.huhs_expected > 0
    assert figures.in_flight == 0
    assert figures.accepted == figures.handled + figures.errored
    assert set(figures.errored_by_reason) == {"malformed", "no-route", "invalid-payload", "forbidden-sender", "forbidden-dtd"}
    assert figures.rss_growth_kib <= 20 * 1024
    assert figures.conversations == 0 and figures.context_threads == 0 and figures.frames_dropped == 0
    assert figures.exit_code == 0 and "stopped: accepted=" in figures.final_line
