"""scripts/bench.py --quick --peers runs end to end: every row is printed, every figure is in the JSON.

Timings depend on the machine, so nothing here asserts a timing or a PASS; only that
the bench ran, measured everything it promises, said what it measured, and computed
its ratios from figures of the same run. The autogen-core table is checked when
autogen-core is installed (`pip install -e '.[bench]'`); without it, that the bench
says so and runs everything else.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs scripts/bench.py --quick --peers in a subprocess

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench.py"
AUTOGEN = importlib.util.find_spec("autogen_core") is not None

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
PEER_ROWS = (
    "peers: 1 hop",
    "peers: 2 hops",
    "peers: request/response p50",
    "peers: request/response p99",
    "peers: 500 x 10 ms handlers",
)
PEER_WORKLOADS = ("one_hop", "two_hops", "ask_p50", "ask_p99", "naps")

FIGURES = (
    "floor_us",
    "one_hop_us_per_hop",
    "one_hop_x_floor",
    "two_hops_us_per_hop",
    "two_hops_x_floor",
    "two_vs_one_hop",
    "two_hop_floor_us",
    "inproc_p50_ms",
    "inproc_p50_x_floor2",
    "inproc_p99_ms",
    "inproc_p99_x_floor2",
    "socket_p50_ms",
    "socket_p50_x_floor2",
    "socket_p99_ms",
    "socket_p99_x_floor2",
    "concurrency_wall_ms",
    "concurrency_ideal_ms",
    "concurrency_x_ideal",
    "rss_growth_mib",
    "peer_ask_p50_ms",
    "peer_call_x_ask",
    "journal_us_per_hop",
    "journal_off_us_per_hop",
    "journal_x_off",
)
SOCKET_FIGURES = ("socket_p50_ms", "socket_p50_x_floor2", "socket_p99_ms", "socket_p99_x_floor2")
PEER_FIGURES = tuple(f"{w}_{what}" for w in PEER_WORKLOADS for what in ("ours", "autogen", "x_autogen"))
TARGETED = ("one_hop_x_floor", "two_hops_x_floor", "two_vs_one_hop", "inproc_p50_x_floor2", "socket_p50_x_floor2",
            "socket_p99_x_floor2", "concurrency_x_ideal", "rss_growth_mib", "journal_x_off", "peer_call_x_ask",
            "one_hop_x_autogen", "two_hops_x_autogen", "ask_p50_x_autogen")
LATENCY = re.compile(r"\d+\.\d{3} ms = \d+\.\d{2}x two-hop floor")


def load_bench():
    """scripts/bench.py as a module (its helpers and its table), loaded once."""
    module = sys.modules.get("bench_under_test")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_under_test"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--peers", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout, json.loads(out.read_text(encoding="utf-8"))


def row(stdout: str, label: str) -> str:
    rows = [line for line in stdout.splitlines() if line.startswith(label)]
    assert len(rows) == 1, f"row {label!r} printed {len(rows)} times:\n{stdout}"
    return rows[0]


@pytest.mark.timeout(300)
def test_every_row_is_printed_once_with_a_target_column(quick_run):
    stdout, _ = quick_run
    for label in ROWS:
        assert row(stdout, label).rstrip().split()[-1] in ("PASS", "MISS", "n/a", "-"), label
    # the targets are printed beside the figures
    for target in ("≤ 2.0x floor", "≤ 2.1x", "≤ 1.5x two-hop floor", "≤ 4.5x two-hop floor", "≤ 10x two-hop floor",
                   "≤ 2x ideal", "≤ 20 MiB"):
        assert target in stdout, target


@pytest.mark.timeout(300)
def test_latency_rows_print_the_absolute_time_and_the_ratio_to_the_two_hop_floor(quick_run):
    stdout, data = quick_run
    labels = ["in-process ask p50", "in-process ask p99"]
    if data["socket"]["status"] == "ok":
        labels += ["socket ask p50", "socket ask p99"]
    for label in labels:
        assert LATENCY.search(row(stdout, label)), row(stdout, label)
    assert "two hops" in row(stdout, "floor: direct lxml+xmlable")


@pytest.mark.timeout(300)
def test_quick_says_it_is_quick_and_what_it_scaled_down(quick_run):
    stdout, data = quick_run
    assert data["mode"] == "quick"
    assert "quick run" in stdout.splitlines()[0]
    assert "quick; full 100,000 / 10,000" in row(stdout, "memory: RSS growth")
    assert "quick; full 20,000" in row(stdout, "pump 1 hop")


@pytest.mark.timeout(300)
def test_the_json_has_every_figure(quick_run):
    stdout, data = quick_run
    figures = data["figures"]
    assert set(FIGURES + PEER_FIGURES) <= set(figures)
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
def test_latency_ratios_are_to_the_floor_of_the_same_run(quick_run):
    _, data = quick_run
    f = data["figures"]
    assert f["two_hop_floor_us"] == pytest.approx(2 * f["floor_us"])
    for kind in ("inproc", "socket"):
        for q in ("p50", "p99"):
            if f[f"{kind}_{q}_ms"] is None:
                continue
            assert f[f"{kind}_{q}_x_floor2"] == pytest.approx(f[f"{kind}_{q}_ms"] * 1e3 / f["two_hop_floor_us"])


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
        assert all("n/a (server not available)" in line for line in socket_rows)
        assert f"socket: {status}" in stdout


@pytest.mark.timeout(300)
@pytest.mark.skipif(not AUTOGEN, reason="autogen-core is not installed (pip install -e '.[bench]')")
def test_peers_prints_each_workload_once_with_its_ratio_to_autogen_core(quick_run):
    stdout, data = quick_run
    peers = data["peers"]
    assert peers["status"] == "ok", peers
    assert f"vs autogen-core {peers['autogen_core']}" in stdout
    for label in PEER_ROWS:
        line = row(stdout, label)
        assert re.search(r"\d+\.\d\dx", line), line
        assert line.rstrip().split()[-1] in ("PASS", "MISS", "-"), line
    assert "≤ 0.7x" in row(stdout, "peers: 1 hop") and "≤ 0.7x" in row(stdout, "peers: 2 hops")
    assert "≤ 1x" in row(stdout, "peers: request/response p50")
    assert peers["rounds"] >= 3
    for key in PEER_WORKLOADS:
        workload = peers["workloads"][key]
        assert len(workload["ours_rounds"]) == len(workload["autogen_rounds"]) == peers["rounds"], key
        assert workload["x_autogen"] == pytest.approx(workload["ours"] / workload["autogen"]), key
        assert data["figures"][f"{key}_x_autogen"] == workload["x_autogen"]
    for key in ("one_hop_x_autogen", "two_hops_x_autogen", "ask_p50_x_autogen"):
        assert data["verdicts"][key] in ("PASS", "MISS"), key


@pytest.mark.timeout(300)
def test_without_autogen_core_peers_says_how_to_install_it_and_the_rest_runs(quick_run, monkeypatch):
    stdout, data = quick_run
    bench = load_bench()
    monkeypatch.setitem(sys.modules, "autogen_core", None)  # `import autogen_core` raises ImportError
    monkeypatch.delitem(sys.modules, "bench_peers", raising=False)
    module, status = bench.load_peers()
    assert module is None and "pip install -e '.[bench]'" in status
    table = bench.render({**data, "peers": {"status": status}})
    assert f"peers: {status}" in table.splitlines()
    assert not any(line.startswith("peers: 1 hop") for line in table.splitlines())
    for label in ROWS:  # the main table is all there
        row(table, label)
    if not AUTOGEN:  # the run itself was one without autogen-core
        assert data["peers"]["status"] == status and f"peers: {status}" in stdout
        assert all(data["verdicts"][key] == "n/a" for key in ("one_hop_x_autogen", "two_hops_x_autogen", "ask_p50_x_autogen"))
        assert all(data["figures"][key] is None for key in PEER_FIGURES)


def test_the_concurrency_row_lets_the_sleeper_use_every_handler_slot():
    from agentserver.config import load_config
    from agentserver.message_bus.listeners import Routes

    bench = load_bench()
    config = load_config("<bench organism>", text=bench.organism.config_yaml(max_concurrent_handlers=100))
    assert Routes.from_config(config).by_name["sleeper"].concurrency == 100
