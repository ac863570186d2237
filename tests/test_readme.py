"""The README's snippets run as written: every block is executed by one of these tests.

- Python: the tour is followed in a fresh directory (`mylisteners.py` is the README's
  first Python block, `config/organism.yaml` gets the README's listener entry, and the
  in-process and socket client snippets run there as scripts). `trips.py` (Awaiting a
  peer) and `payments.py` (Durability) are written as modules and run in organisms
  made of the README's own YAML blocks for them.
- YAML: each block is loaded through the real config loader inside a complete organism,
  and run where that needs no network (the LLM backends of "LLM access" need API keys
  and servers: they are loaded and checked with `agentserver check`, not asked).
- Shell (blocks without a language, or sh/bash/console): every command line runs, in
  README order, in a fresh tour directory, as `python -m agentserver ...`. A line
  ending in `&` starts a server (stopped with SIGTERM at the end of its block, where it
  must exit 0); a verb that needs a server gets `run config/organism.yaml` (the first
  command of the README) when none runs. A command must exit 0, or N when its line
  ends with `# exits N`; each `# ...` line right after a command is a line its output
  must contain (`…` stands for any text, `8c8f…0001` for any id). Lines that install
  are listed in SKIPPED with the reason; any other line the test cannot run fails it.
  Blocks that show output (`text`, or listed in NOT_COMMANDS) are not run.

`test_every_block_is_run` keeps it so: a new block, or a new command line, fails until
a test runs it (or SKIPPED lists it, with why).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentserver import ConfigError, bootstrap, load_config
from tests.server_harness import REPO, RunningServer, cli, env
from tests.support import HANG_GUARD, assert_counters, settle

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
SHELL = ("", "sh", "bash", "console")
OUTPUT = ("text",)  # shown, not run


def block(lang: str, marker: str) -> str:
    found = [code for kind, code in BLOCKS if kind == lang and marker in code]
    assert len(found) == 1, f"expected one {lang} block with {marker!r}, found {len(found)}"
    return found[0]


# Which test runs each block: a marker only that block contains.
PYTHON_BLOCKS = {
    "class Question": "the tour's mylisteners.py, run by both client snippets",
    "bootstrap(": "test_the_in_process_snippet_runs_in_a_fresh_directory",
    "import connect": "test_the_socket_snippet_runs_against_the_tour_server",
    "class Trip": "test_the_awaiting_a_peer_handler_*",
    "class Payment": "test_the_payment_handler_charges_a_redelivered_payment_once",
}
YAML_BLOCKS = {
    "name: reverser": "the tour's listener, run by both client snippets and the shell blocks",
    "name: trips": "test_the_awaiting_a_peer_handler_*",
    "name: payments": "test_the_payment_handler_charges_a_redelivered_payment_once",
    "strategy:": "test_the_llm_blocks_*",
    "name: planner": "test_the_llm_blocks_* and test_the_llm_agent_block_answers_with_a_replayed_model",
    "name: trip-planner": "test_the_observing_block_loads",
}
# Shell blocks that are output, not commands (by their first line).
NOT_COMMANDS = {
    "agentserver bench: full run": "the output of `python scripts/bench.py --peers` (Performance), shown, not run",
}
# Shell blocks run by a test elsewhere (the first line -> the test that runs it, which must exist).
RUN_ELSEWHERE = {
    "nats-server -js": "tests/test_nats_transport.py::test_the_readme_cluster_block_runs",
}
# Command lines not run here, with the reason.
SKIPPED = {
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m agentserver run config/organism.yaml":
        "installs into a new venv (these tests run in the installed one); its `run config/organism.yaml` is what the "
        "shell blocks that need a server start",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q --all":
        "installs and runs this very test suite (CI runs that line: .ci/run)",
}
AGENTSERVER = ([".venv/bin/python", "-m", "agentserver"], ["python", "-m", "agentserver"], ["agentserver"])  # as the README writes the command
SERVER_VERBS = {"ask", "send", "status", "deadletters", "cancel", "watch"}  # these talk to a running server
DEFAULT_RUN = "agentserver run config/organism.yaml &"


# ------------------------------------------------------------------------ every block
def test_every_block_is_run():
    assert {lang for lang, _ in BLOCKS} <= {"python", "yaml", *SHELL, *OUTPUT}, "a block of a language no test runs"
    for lang, known in (("python", PYTHON_BLOCKS), ("yaml", YAML_BLOCKS)):
        for code in (code for kind, code in BLOCKS if kind == lang):
            claimed = [marker for marker in known if marker in code]
            assert len(claimed) == 1, f"this {lang} block is run by no test (or its marker is not unique):\n{code}"
        for marker in known:
            block(lang, marker)  # each marker still names exactly one block
    for code in shell_blocks():
        commands(code)  # every line is runnable or SKIPPED (it fails otherwise)
    lines = {line for lang, code in BLOCKS if lang in SHELL for line in code.splitlines()}
    assert not set(SKIPPED) - lines, "SKIPPED lists a line the README no longer has"
    assert all(any(code.startswith(first) for _, code in BLOCKS) for first in NOT_COMMANDS)
    for first, test in RUN_ELSEWHERE.items():
        assert any(code.startswith(first) for _, code in BLOCKS), f"RUN_ELSEWHERE names a block the README lacks: {first}"
        path, _, name = test.partition("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{test} does not exist"


def test_every_python_block_compiles():
    for lang, code in BLOCKS:
        if lang == "python":
            compile(code, "README.md", "exec")


# ------------------------------------------------------------------------ the tour
def tour_directory(tmp_path: Path) -> Path:
    (tmp_path / "mylisteners.py").write_text(block("python", "class Question"))
    config = (REPO / "config" / "organism.yaml").read_text() + "\n" + block("yaml", "name: reverser")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "organism.yaml").write_text(config)
    (tmp_path / "config" / "llm-organism.yaml").write_text((REPO / "config" / "llm-organism.yaml").read_text())
    return tmp_path


def run_script(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(PYTHONPATH=f"{cwd}{os.pathsep}{REPO}"),
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
    with RunningServer(config, workdir=cwd, PYTHONPATH=f"{cwd}{os.pathsep}{REPO}") as server:
        done = run_script(block("python", "import connect"), cwd)
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "accepted on thread" in done.stdout
    assert "<Answer><Text>ih</Text><Words>1</Words></Answer>" in done.stdout


# ------------------------------------------------------------------------ Python modules
ORGANISM = "organism:\n  name: readme\n"


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A working directory on sys.path for the README's modules (trips, payments);
    they are forgotten after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("trips", "payments"):
        sys.modules.pop(name, None)


def stated_exchange() -> tuple[str, str]:
    """What the README says `trips` answers, and to what."""
    found = re.search(r"Asked `(<Trip>.*?)`, `trips` answers\s+`(<Plan>.*?)`", README)
    assert found, "the Awaiting a peer section no longer says what trips answers"
    return found.group(1), found.group(2)


async def weather_down(payload, meta):
    raise RuntimeError("the weather service is down")


async def test_the_awaiting_a_peer_handler_gets_its_peers_answer(start, modules):
    (modules / "trips.py").write_text(block("python", "class Trip"))
    pump = await start(ORGANISM + block("yaml", "name: trips"))
    question, answer = stated_exchange()
    async with pump.client("me") as client:
        reply = await asyncio.wait_for(client.ask(question, to="trips", timeout=10), HANG_GUARD)
    assert reply.xml == answer and reply.sender == "trips"
    listeners = pump.status()["listeners"]
    # the forecast resumed the waiting handler: it was not delivered to trips as a new call
    assert (listeners["trips"]["delivered"], listeners["weather"]["delivered"]) == (1, 1)


async def test_the_awaiting_a_peer_handler_answers_when_its_peer_fails(start, modules):
    (modules / "trips.py").write_text(block("python", "class Trip"))
    config = ORGANISM + block("yaml", "name: trips")
    assert "handler: trips.handle_city" in config
    pump = await start(config.replace("handler: trips.handle_city", "handler: tests.test_readme.weather_down"))
    question, _ = stated_exchange()
    async with pump.client("me") as client:
        reply = await asyncio.wait_for(client.ask(question, to="trips", timeout=10), HANG_GUARD)
    assert reply.xml == "<Plan><Text>no forecast (handler)</Text></Plan>"  # the PeerError branch, exc.code


CRASH: dict[str, asyncio.Event] = {}


async def charge_then_die(payload, meta):
    """The README's handler, then the process "dies" before the unit's end is on disk
    (here the shutdown deadline cuts it off, which the journal treats the same)."""
    await sys.modules["payments"].handle_payment(payload, meta)
    CRASH["charged"].set()
    await asyncio.Event().wait()


async def test_the_payment_handler_charges_a_redelivered_payment_once(modules):
    (modules / "payments.py").write_text(block("python", "class Payment"))
    config = block("yaml", "name: payments")
    assert "journal:" in config and "handler: payments.handle_payment" in config
    (modules / "organism.yaml").write_text(config.replace("payments.handle_payment", "tests.test_readme.charge_then_die"))
    CRASH["charged"] = asyncio.Event()

    def charges() -> list[tuple[str, int]]:
        with sqlite3.connect(modules / "ledger.sqlite") as db:
            return db.execute("SELECT message_id, cents FROM charges ORDER BY rowid").fetchall()

    first = bootstrap("organism.yaml")
    async with first:
        async with first.client("shop") as client:
            sent = client.send("<Payment><Cents>500</Cents></Payment>", to="payments")
            accepted = await asyncio.wait_for(sent, HANG_GUARD)
            await asyncio.wait_for(CRASH["charged"].wait(), HANG_GUARD)
            report = await asyncio.wait_for(first.shutdown(0.2), HANG_GUARD)
    assert report.deferred == 1
    assert charges() == [(accepted.message_id, 500)]

    (modules / "organism.yaml").write_text(config)  # the README's handler, as written
    second = bootstrap("organism.yaml")
    async with second:
        await settle(second)
        assert second.status()["journal"]["replayed_at_start"] == 1
        # the replayed payment ran again (redelivered) and answered; its client is gone
        (letter,) = second.dead_letters.recent()
        assert letter.code == "undeliverable"
        assert f"<Receipt><Id>{accepted.message_id}</Id></Receipt>" in letter.raw.decode()
        assert charges() == [(accepted.message_id, 500)]  # and did not charge twice
        async with second.client("shop") as client:
            asked = client.ask("<Payment><Cents>700</Cents></Payment>", to="payments", timeout=10)
            reply = await asyncio.wait_for(asked, HANG_GUARD)
        await settle(second)
        assert_counters(second)
    assert charges() == [(accepted.message_id, 500), (reply.payload.id, 700)]  # a new payment is charged


# ------------------------------------------------------------------------ YAML
LLM_KEYS = {"OPENAI_API_KEY": "sk-readme", "ANTHROPIC_API_KEY": "sk-ant-readme"}  # set, never used: nothing is asked
CALCULATOR = """\
  - name: calculator
    payload_class: agentserver.examples.planner.Add
    handler: agentserver.examples.planner.calculator
    description: Adds two whole numbers; answers <Sum>.
"""


def llm_organism(llm: str | None = None) -> str:
    """The LLM sections as one organism: the backends of "LLM access" (or `llm`), the
    planner of "LLM agents", and the calculator it calls."""
    return ORGANISM + (llm or block("yaml", "strategy:")) + block("yaml", "name: planner") + CALCULATOR


def test_the_llm_blocks_load_through_the_config_loader():
    config = load_config("organism.yaml", text=llm_organism(), env=LLM_KEYS)
    assert config.llm is not None and (config.llm.strategy, config.llm.retries) == ("failover", 3)
    local, claude = config.llm.backends
    assert (local.name, local.provider, local.base_url, local.api_key_env, local.models) == (
        "local", "openai", "http://127.0.0.1:8080/v1", "OPENAI_API_KEY", ("qwen2.5-7b",))
    assert (local.max_concurrent, local.rate_limit_tpm) == (8, 200000)
    assert (claude.name, claude.provider, claude.api_key_env, claude.models) == (
        "claude", "anthropic", "ANTHROPIC_API_KEY", ("claude-sonnet-4-5",))
    planner = next(spec for spec in config.listeners if spec.name == "planner")
    assert planner.agent and planner.peers == ["calculator"] and planner.handler is None
    assert planner.llm.prompt and planner.llm.reply_class.__name__ == "Summary"
    assert (planner.llm.max_tokens, planner.llm.max_reasks, planner.llm.budget.tokens_per_conversation) == (256, 2, 20000)


def typos(code: str) -> list[tuple[str, str]]:
    """(key, the block with that one key misspelled) for every key the block sets."""
    variants = []
    for number, line in enumerate(code.splitlines()):
        for key in re.findall(r"^[\s-]*(\w+):|\{(\w+):", line):
            key = "".join(key)
            wrong = line.replace(f"{key}:", f"{key}x:", 1)
            lines = code.splitlines()
            lines[number] = wrong
            variants.append((key, "\n".join(lines) + "\n"))
    return variants


@pytest.mark.parametrize("marker", ["strategy:", "name: planner"])
def test_the_llm_blocks_fail_to_load_with_any_key_misspelled(marker):
    code = block("yaml", marker)
    variants = typos(code)
    assert len(variants) >= 9
    for key, wrong in variants:
        text = llm_organism().replace(code, wrong)
        with pytest.raises(ConfigError):
            load_config("organism.yaml", text=text, env=LLM_KEYS)
            pytest.fail(f"{key!r} misspelled in the README's block with {marker!r} still loads")


@pytest.mark.subprocess
def test_the_llm_blocks_pass_agentserver_check(tmp_path):
    (tmp_path / "organism.yaml").write_text(llm_organism())
    done = cli("check", "organism.yaml", cwd=tmp_path, **LLM_KEYS)
    assert done.returncode == 0, done.stderr
    assert "planner" in done.stdout and "calculator" in done.stdout
    missing = cli("check", "organism.yaml", cwd=tmp_path, ANTHROPIC_API_KEY="")
    assert missing.returncode == 4 and "ANTHROPIC_API_KEY" in missing.stderr  # the keys are really checked


async def test_the_llm_agent_block_answers_with_a_replayed_model(start):
    """The README's planner, served by the agent loop, with the scripted backend of
    config/llm-organism.yaml in place of the real ones (offline)."""
    shipped = (REPO / "config" / "llm-organism.yaml").read_text()
    replay = shipped[shipped.index("\nllm:\n") + 1:shipped.index("\nlisteners:\n") + 1]
    pump = await start(llm_organism(replay))
    async with pump.client("me") as client:
        asked = client.ask("<Task><Text>What is 2 + 3?</Text></Task>", to="planner", timeout=20)
        reply = await asyncio.wait_for(asked, HANG_GUARD)
    assert reply.xml == "<Summary><Text>2 + 3 = 5</Text><Total>5</Total></Summary>"


def test_the_observing_block_loads():
    code = block("yaml", "name: trip-planner")
    config = load_config("organism.yaml", text=code + "listeners:\n" + CALCULATOR)
    assert (config.name, config.http) == ("trip-planner", "127.0.0.1:9100")


# ------------------------------------------------------------------------ shell
@dataclass
class Command:
    line: str
    argv: list[str]  # run as: sys.executable -m agentserver ...
    background: bool = False  # ends with `&`: a server, stopped at the end of the block
    exit_code: int = 0
    expected: list[str] = field(default_factory=list)  # lines its output must contain

    @property
    def verb(self) -> str:
        return self.argv[3]


def shell_blocks() -> list[str]:
    return [code for lang, code in BLOCKS if lang in SHELL
            and not any(code.startswith(first) for first in (*NOT_COMMANDS, *RUN_ELSEWHERE))]


def command(line: str) -> Command:
    words = shlex.split(line, comments=True)
    background = words[-1] == "&"
    if background:
        words.pop()
    for prefix in AGENTSERVER:
        if words[:len(prefix)] == prefix and len(words) > len(prefix):
            exits = re.search(r"\s#\s*exits (\d+)\s*$", line)
            return Command(line, [sys.executable, "-m", "agentserver", *words[len(prefix):]], background,
                           int(exits.group(1)) if exits else 0)
    pytest.fail(f"README command line {line!r}: tests/test_readme.py cannot run it; make it an agentserver command "
                "or list it in SKIPPED with the reason")


def commands(code: str) -> list[Command]:
    found: list[Command] = []
    for line in code.splitlines():
        if not line.strip() or line in SKIPPED:
            continue
        if line.startswith("#"):
            assert found, f"an expected output line with no command before it: {line!r}"
            found[-1].expected.append(line[1:].strip())
        else:
            found.append(command(line))
    return found


def shows(output: str, expected: str) -> bool:
    """Whether a line of `output` is `expected`, where `…` is any text and an id cut
    short (`8c8f…0001`) any id."""
    def regex(part: str) -> str:
        return "[0-9a-f-]+" if re.fullmatch(r"[0-9a-f]+…[0-9a-f]+", part) else ".*?" if part == "…" else re.escape(part)

    pattern = "".join(regex(part) for part in re.split(r"([0-9a-f]+…[0-9a-f]+|…)", expected))
    return any(re.fullmatch(pattern, line) for line in output.splitlines())


class Server:
    """A `run` command line in the background, as a terminal would have it."""

    def __init__(self, run: Command, cwd: Path) -> None:
        self.run, self.cwd = run, cwd
        self.log_path = cwd / "server.log"
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(run.argv, cwd=cwd, env=env(PYTHONPATH=f"{cwd}{os.pathsep}{REPO}"),
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "listening on" not in self.log:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"{run.line!r} did not start listening (exit code {self.process.returncode}):\n{self.log}")
            time.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        """SIGTERM, as the README says: drain, a one-line summary, the socket removed, exit 0."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(30)
        finally:
            self.kill()
        assert code == 0, f"{self.run.line!r} exited {code} on SIGTERM:\n{self.log}"
        assert "stopped: accepted=" in self.log, self.log
        assert not (self.cwd / "run" / "agentserver.sock").exists()

    def kill(self) -> None:
        """Make sure it is gone (a test that failed half-way)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log_file.close()


def command_lines(code: str) -> list[str]:
    return [line for line in code.splitlines() if line.strip() and not line.startswith("#") and line not in SKIPPED]


def first_words(code: str) -> str:
    """A test id: the first command of the block, without the agentserver prefix."""
    words = command_lines(code)[0].split()
    return " ".join(words[words.index("agentserver") + 1:][:3] if "agentserver" in words else words[:3])


@pytest.mark.subprocess
@pytest.mark.parametrize("code", [code for code in shell_blocks() if command_lines(code)], ids=first_words)
def test_the_shell_block_runs(code, tmp_path):
    cwd = tour_directory(tmp_path)
    server: Server | None = None
    try:
        for step in commands(code):
            if step.verb == "run":
                assert step.background, f"{step.line!r}: a server in the foreground would never end"
                if server is not None:
                    server.stop()
                server = Server(step, cwd)
                continue
            if step.verb in SERVER_VERBS and server is None:
                server = Server(command(DEFAULT_RUN), cwd)
            done = subprocess.run(step.argv, cwd=cwd, env=env(PYTHONPATH=f"{cwd}{os.pathsep}{REPO}"),
                                  capture_output=True, text=True, timeout=60)
            said = f"{step.line!r} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            assert done.returncode == step.exit_code, said
            for expected in step.expected:
                assert shows(done.stdout + done.stderr, expected), f"{expected!r} not in the output of {said}"
        if server is not None:
            server.stop()
            server = None
    finally:
        if server is not None:
            server.kill()
