"""The README's snippets run as written.

The tour is followed in a fresh directory: its `mylisteners.py` is the README's first
Python block, its config is `config/organism.yaml` with the README's listener entry
added, and the two client snippets (in-process and over the socket) run there as
scripts. The other Python blocks must at least compile: they name payload classes of
a user's own.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_harness import REPO, RunningServer, env

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def block(lang: str, marker: str) -> str:
    found = [code for kind, code in BLOCKS if kind == lang and marker in code]
    assert len(found) == 1, f"expected one {lang} block with {marker!r}, found {len(found)}"
    return found[0]


def test_every_python_block_compiles():
    assert len(PYTHON) >= 4
    for code in PYTHON:
        ast.parse(code)


def tour_directory(tmp_path: Path) -> Path:
    (tmp_path / "mylisteners.py").write_text(block("python", "class Question"))
    config = (REPO / "config" / "organism.yaml").read_text() + "\n" + block("yaml", "name: reverser")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "organism.yaml").write_text(config)
    return tmp_path


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(PYTHONPATH=f"{cwd}:{REPO}"),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.subprocess
def test_the_in_process_snippet_runs_in_a_fresh_directory(tmp_path):
    cwd = tour_directory(tmp_path)
    done = run_script(block("python", "bootstrap("), cwd)
    assert done.returncode == 0, done.stderr
    assert "Answer(text='ih', words=1)" in done.stdout


@pytest.mark.subprocess
def test_the_socket_snippet_runs_against_the_tour_server(tmp_path):
    cwd = tour_directory(tmp_path)
    config = (cwd / "config" / "organism.yaml").read_text()
    with RunningServer(config, workdir=cwd, PYTHONPATH=f"{cwd}:{REPO}") as server:
        done = run_script(block("python", "connect("), cwd)
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "accepted on thread" in done.stdout
    assert "<Answer><Text>ih</Text><Words>1</Words></Answer>" in done.stdout
