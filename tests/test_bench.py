"""scripts/bench.py --quick runs end to end: every row is printed, every figure is in the JSON.

Timings depend on the machine, so nothing here asserts a timing or a PASS; only that
the bench ran, measured everything it promises, and said what it measured.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs scripts/bench.py --quick in a subprocess

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"

# the start of each row's label, in table order
ROWS = (
    "floor: direct lxml+xmlable",
    "pump 1 hop",
    "pump 2 hops",
    "2 hops vs 1 hop",
    "in-process ask p50",
    "in-process ask p99",
    "socket ask p50",
    "socket ask p99",
    "concurrency:",
    "memory: RSS growth",
)

FIGURES = (
    "floor_us",
    "one_hop_us_per_hop",
    "one_hop_x_floor",
    "two_hops_us_per_hop",
    "two_hops_x_floor",
    "two_vs_one_hop",
    "inproc_p50_ms",
    "inproc_p99_ms",
    "socket_p50_ms",
    "socket_p99_ms",
    "concurrency_wall_ms",
    "concurrency_ideal_ms",
    "concurrency_x_ideal",
    "rss_growth_mib",
)
SOCKET_FIGURES = ("socket_p50_ms", "socket_p99_ms")
TARGETED = ("one_hop_x_floor", "two_hops_x_floor", "two_vs_one_hop", "inproc_p50_ms", "socket_p50_ms",
            "socket_p99_ms", "concurrency_x_ideal", "rss_growth_mib")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout, json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.timeout(300)
def test_every_row_is_printed_once_with_a_target_column(quick_run):
    stdout, _ = quick_run
    lines = stdout.splitlines()
    for label in ROWS:
        rows = [line for line in lines if line.startswith(label)]
        assert len(rows) == 1, f"row {label!r} printed {len(rows)} times:\n{stdout}"
        assert rows[0].rstrip().split()[-1] in ("PASS", "MISS", "n/a", "-"), rows[0]
    # the targets are printed beside the figures
    for target in ("≤ 2.0x floor", "≤ 2.1x", "≤ 0.3 ms", "≤ 1 ms", "≤ 5 ms", "≤ 2x ideal", "≤ 20 MiB"):
        assert target in stdout, target


@pytest.mark.timeout(300)
def test_quick_says_it_is_quick_and_what_it_scaled_down(quick_run):
    stdout, data = quick_run
    assert data["mode"] == "quick"
    assert "quick run" in stdout.splitlines()[0]
    memory_row = next(line for line in stdout.splitlines() if line.startswith("memory: RSS growth"))
    assert "quick; full 100,000 / 10,000" in memory_row
    throughput_row = next(line for line in stdout.splitlines() if line.startswith("pump 1 hop"))
    assert "quick; full 20,000" in throughput_row


@pytest.mark.timeout(300)
def test_the_json_has_every_figure(quick_run):
    stdout, data = quick_run
    figures = data["figures"]
    assert set(FIGURES) <= set(figures)
    for key in FIGURES:
        if key in SOCKET_FIGURES:
            continue
        assert isinstance(figures[key], (int, float)) and math.isfinite(figures[key]), (key, figures[key])
    assert set(data["verdicts"]) == set(TARGETED)
    assert all(v in ("PASS", "MISS", "n/a") for v in data["verdicts"].values()), data["verdicts"]
    assert data["counts"]["concurrency_messages"] == 500 and data["counts"]["concurrency_handlers"] == 100
    assert data["memory"]["messages"] == data["counts"]["memory_conversations"] * 10
    assert data["table"] == stdout.splitlines()[: len(data["table"])]


@pytest.mark.timeout(300)
def test_the_socket_row_is_measured_or_says_why_not(quick_run):
    stdout, data = quick_run
    status = data["socket"]["status"]
    socket_rows = [line for line in stdout.splitlines() if line.startswith("socket ask")]
    if status == "ok":
        for key in SOCKET_FIGURES:
            assert isinstance(data["figures"][key], float), key
    else:
        assert status.startswith("n/a")
        assert all(data["figures"][key] is None for key in SOCKET_FIGURES)
        assert all("n/a (server not available)" in row for row in socket_rows)
        assert f"socket: {status}" in stdout
