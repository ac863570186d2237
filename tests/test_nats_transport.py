"""The organism on NATS JetStream (DESIGN.md §15): members share the work and survive kill -9.

Each test starts its own nats-server (tests/nats_harness.py) and real `agentserver run
--transport` processes, and talks to them over their sockets as clients do. The
handlers (tests/cluster_organisms.py) record which process ran them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentserver.client import connect
from tests.cluster_organisms import Answer, Capped, Chain, Done, Job, Question
from tests.nats_harness import cluster_config, records
from tests.server_harness import RunningServer, cli, env, free_port

pytestmark = pytest.mark.subprocess

PAYLOADS = [Job, Capped, Done, Question, Answer]


def member(nats, tmp_path: Path, record: Path, config: str | None = None, **extra_env: str) -> RunningServer:
    return RunningServer(config or cluster_config(), args=("--transport", nats.url), AS_RECORD=str(record), **extra_env)


async def ask_all(server: RunningServer, payloads: list, to: str, timeout: float = 90) -> list:
    async with connect(server.socket_path, payloads=PAYLOADS) as client:
        try:
            replies = await asyncio.gather(*(client.ask(payload, to=to, timeout=timeout) for payload in payloads))
        except Exception as exc:
            raise AssertionError(f"{exc!r}; the member's log:\n{server.log}") from exc
    return [reply.payload for reply in replies]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_two_members_share_the_work(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a, member(nats_server, tmp_path, record) as b:
        done = asyncio.run(ask_all(a, [Job(n=n, spin_ms=5) for n in range(200)], "jobs"))
        assert sorted(reply.n for reply in done) == list(range(200))
        ran = records(record)
        assert {line["pid"] for line in ran} == {a.process.pid, b.process.pid}, "both members handle jobs"
        status = asyncio.run(_status(b))
        members = status["members"]
        assert {entry["pid"] for entry in members["members"]} == {a.process.pid, b.process.pid}
        assert members["connected"] is True and members["listeners"]["jobs"]["cap"] == 10
    assert a.returncode == 0 and b.returncode == 0, a.log + b.log


async def _status(server: RunningServer) -> dict:
    async with connect(server.socket_path) as client:
        return await client.status()


def test_kill_9_of_a_member_loses_no_acked_message(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a:
        b = member(nats_server, tmp_path, record).start()
        try:
            async def load() -> list:
                async def killer() -> None:
                    while not any(line["pid"] == b.process.pid for line in records(record)):
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.3)  # b is busy with its share
                    b.process.kill()  # SIGKILL: no drain, no goodbye
                kill = asyncio.create_task(killer())
                done = await ask_all(a, [Job(n=n, spin_ms=2, sleep_ms=100) for n in range(300)], "jobs", timeout=120)
                await kill
                return done

            done = asyncio.run(load())
        finally:
            b.stop()
        assert b.returncode == -signal.SIGKILL
        assert sorted(reply.n for reply in done) == list(range(300)), "every acked job answered"
        ran = records(record)
        assert {line["n"] for line in ran} == set(range(300))
        redelivered = [line for line in ran if line["redelivered"]]
        assert redelivered and all(line["pid"] == a.process.pid for line in redelivered), \
            "b's units ran again on a, flagged meta.redelivered"
        again = {line["n"] for line in redelivered}
        assert any(reply.pid == a.process.pid for reply in done if reply.n in again), "a's run answered"
        # b may have published a result and died before acking its unit: that answer stands, a's run is a duplicate
        assert all(reply.pid in {line["pid"] for line in ran if line["n"] == reply.n} for reply in done)


def test_kill_9_of_an_owner_its_open_conversations_are_adopted(nats_server, tmp_path):
    """The member holding the client's connection dies mid-conversation: another member
    adopts what it left open (its journal is in JetStream) and takes each conversation to
    its end, under the same conversation id; the replies are dead letters there (their
    client was connected to the member that died), as after a restart with a journal."""
    record = tmp_path / "record.jsonl"

    def steps(last: bool = False) -> dict[int, set]:
        found: dict[int, set] = {}
        for line in records(record):
            if line.get("role") == "chain" and (not last or line["step"] == 4):
                found.setdefault(line["n"], set()).add(line["conversation"])
        return found

    with member(nats_server, tmp_path, record) as b:
        a = member(nats_server, tmp_path, record).start()
        try:
            async def load() -> None:
                client = await connect(a.socket_path, payloads=[*PAYLOADS, Chain]).__aenter__()
                for n in range(20):
                    await client.send(Chain(n=n, step=1, last=4, sleep_ms=300), to="chain")  # acked
                while len(steps()) < 20:  # every conversation is under way
                    await asyncio.sleep(0.02)
                a.process.kill()  # SIGKILL: its clients' conversations are open, their next hops not run
                with contextlib.suppress(Exception):
                    await client.close()

            asyncio.run(load())
        finally:
            a.stop()
        assert a.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 60  # the heartbeat lapses (10 s), then the adopter runs what was left
        while len(steps(last=True)) < 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(steps(last=True)) == list(range(20)), f"every conversation ran to its end:\n{b.log}"
        assert all(len(ids) == 1 for ids in steps().values()), "one conversation id, before and after the adoption"
        adopted = [line for line in records(record) if line.get("role") == "chain" and line["redelivered"]]
        assert adopted and {line["pid"] for line in adopted} == {b.process.pid}, "what was not done ran again on b"
        assert "adopted its 20 open conversations" in b.log, b.log
        status = asyncio.run(_status(b))
        assert status["members"]["adopted"] == 20

        async def letters() -> list:
            async with connect(b.socket_path) as client:
                return await client.deadletters()

        undeliverable = [letter for letter in asyncio.run(letters()) if letter["code"] == "undeliverable"]
        assert len(undeliverable) == 20, "the replies to the client that was connected to a"
    assert b.returncode == 0, b.log


def test_a_member_started_after_the_only_one_died_adopts_what_it_left(nats_server, tmp_path):
    """One member on NATS, killed: a member started later (not running when it died)
    finds its journal, and what was accepted runs to its end, as a restart with
    `organism.journal` would."""
    record = tmp_path / "record.jsonl"
    a = member(nats_server, tmp_path, record).start()
    try:
        async def load() -> None:
            client = await connect(a.socket_path, payloads=[*PAYLOADS, Chain]).__aenter__()
            for n in range(5):
                await client.send(Chain(n=n, step=1, last=3, sleep_ms=500), to="chain")
            while len({line["n"] for line in records(record)}) < 5:
                await asyncio.sleep(0.02)
            a.process.kill()
            with contextlib.suppress(Exception):
                await client.close()

        asyncio.run(load())
    finally:
        a.stop()
    with member(nats_server, tmp_path, record) as b:
        deadline = time.monotonic() + 60
        while len({line["n"] for line in records(record) if line["step"] == 3}) < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {line["n"] for line in records(record) if line["step"] == 3} == set(range(5)), b.log
        assert "adopted its 5 open conversations" in b.log
    assert b.returncode == 0, b.log


def test_a_listener_cap_holds_across_members(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a, member(nats_server, tmp_path, record) as b:
        async def together() -> list:
            first, second = await asyncio.gather(ask_all(a, [Capped(n=n, sleep_ms=200) for n in range(8)], "capped"),
                                                 ask_all(b, [Capped(n=n, sleep_ms=200) for n in range(8, 16)], "capped"))
            return first + second

        done = asyncio.run(together())
        assert sorted(reply.n for reply in done) == list(range(16))
        ran = records(record)
        assert max_overlap([(line["start"], line["end"]) for line in ran]) == 2, "concurrency: 2 organism-wide"
        assert {line["pid"] for line in ran} == {a.process.pid, b.process.pid}


def test_meta_ask_across_members(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a, member(nats_server, tmp_path, record) as b:
        async def both() -> list:
            first, second = await asyncio.gather(ask_all(a, [Question(n=n) for n in range(30)], "asker"),
                                                 ask_all(b, [Question(n=n) for n in range(30, 60)], "asker"))
            return first + second

        answers = asyncio.run(both())
        assert sorted((answer.n, answer.doubled) for answer in answers) == [(n, 2 * n) for n in range(60)]
        crossed = [answer for answer in answers if answer.asker_pid != answer.doubler_pid]
        assert crossed, "some answers were handled on another member than the one waiting, and still resumed it"


def test_two_organisms_on_one_server_stay_isolated(nats_server, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    with member(nats_server, tmp_path, one, cluster_config("alpha")) as a, \
            member(nats_server, tmp_path, two, cluster_config("beta")) as b:
        async def both() -> None:
            first, second = await asyncio.gather(ask_all(a, [Job(n=n) for n in range(40)], "jobs"),
                                                 ask_all(b, [Job(n=n) for n in range(100, 140)], "jobs"))
            assert {reply.pid for reply in first} == {a.process.pid}
            assert {reply.pid for reply in second} == {b.process.pid}

        asyncio.run(both())
    assert {line["pid"] for line in records(one)} == {a.process.pid}
    assert {line["n"] for line in records(two)} == set(range(100, 140))


def test_a_nats_restart_mid_load_loses_nothing_acked(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a:
        async def load() -> tuple[list, dict]:
            async def restart() -> dict:
                while len(records(record)) < 20:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(nats_server.stop)
                await asyncio.sleep(0.5)
                away = await _status(a)  # the member still answers its clients, and says NATS is away
                await asyncio.to_thread(nats_server.start)
                return away
            restarting = asyncio.create_task(restart())
            done = await ask_all(a, [Job(n=n, sleep_ms=20) for n in range(150)], "jobs", timeout=120)
            return done, await restarting

        done, away = asyncio.run(load())
        assert away["members"]["connected"] is False
        assert sorted(reply.n for reply in done) == list(range(150)), "every acked job answered after the restart"
        assert {line["n"] for line in records(record)} == set(range(150))
        assert "went away" in a.log and "is back" in a.log
    assert a.returncode == 0, a.log


def test_an_unreachable_nats_fails_fast(tmp_path):
    (tmp_path / "organism.yaml").write_text(cluster_config())
    started = time.monotonic()
    done = cli("run", "organism.yaml", "--transport", f"nats://127.0.0.1:{free_port()}", cwd=tmp_path, timeout=30)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 15
    assert "cannot reach NATS at nats://127.0.0.1:" in done.stderr and "nats-server" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_member_with_another_configuration_is_refused(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record):
        other = cluster_config().replace("concurrency: 2", "concurrency: 3")
        (tmp_path / "organism.yaml").write_text(other)
        done = cli("run", "organism.yaml", "--transport", nats_server.url, cwd=tmp_path, timeout=30)
        assert done.returncode == 1
        assert "differs from the one its 1 running member(s) use" in done.stderr


def test_journal_together_with_transport_is_a_configuration_error(tmp_path):
    (tmp_path / "organism.yaml").write_text(cluster_config(extra="  journal: run/journal.sqlite\n  transport: nats://127.0.0.1:4222\n"))
    done = cli("check", "organism.yaml", cwd=tmp_path)
    assert done.returncode == 4
    assert "organism.yaml:5: organism.journal and organism.transport do not go together" in done.stdout + done.stderr
    (tmp_path / "organism.yaml").write_text(cluster_config(extra="  journal: run/journal.sqlite\n"))
    done = cli("run", "organism.yaml", "--transport", "nats://127.0.0.1:4222", cwd=tmp_path)
    assert done.returncode == 4 and "--transport: organism.journal and organism.transport" in done.stderr


def test_without_a_transport_nats_is_never_imported(tmp_path):
    code = ("import asyncio, sys\n"
            "from agentserver import bootstrap\n"
            "async def main():\n"
            "    async with bootstrap('organism.yaml') as pump:\n"
            "        async with pump.client('me') as client:\n"
            "            reply = await client.ask(Job(n=1), to='jobs')\n"
            "    assert reply.payload.n == 1\n"
            "from tests.cluster_organisms import Job\n"
            "asyncio.run(main())\n"
            "assert not [m for m in sys.modules if m == 'nats' or m.startswith('nats.')], 'nats imported'\n"
            "assert 'agentserver.transport' not in sys.modules\n")
    (tmp_path / "organism.yaml").write_text(cluster_config())
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_sigterm_on_a_member_finishes_what_it_runs_and_leaves_the_rest(nats_server, tmp_path):
    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a:
        b = member(nats_server, tmp_path, record).start()
        try:
            async def load() -> list:
                async def stop_b() -> None:
                    while not any(line["pid"] == b.process.pid for line in records(record)):
                        await asyncio.sleep(0.05)
                    b.send_signal(signal.SIGTERM)  # b is running units of a's conversations now
                stopping = asyncio.create_task(stop_b())
                done = await ask_all(a, [Job(n=n, sleep_ms=300) for n in range(60)], "jobs", timeout=120)
                await stopping
                return done

            done = asyncio.run(load())
        finally:
            b.stop()
        assert b.returncode == 0, b.log
        assert sorted(reply.n for reply in done) == list(range(60))
        ran = records(record)
        assert sorted(line["n"] for line in ran) == list(range(60)), "each once: b finished what it had taken"
        assert not any(line["redelivered"] for line in ran)
        assert {line["pid"] for line in ran} == {a.process.pid, b.process.pid}


def test_healthz_says_not_ready_while_nats_is_away(nats_server, tmp_path):
    import json
    import urllib.error
    import urllib.request

    port = free_port()
    config = cluster_config(extra=f"  http: 127.0.0.1:{port}\n")

    def healthz() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with member(nats_server, tmp_path, tmp_path / "record.jsonl", config) as a:
        assert healthz()[0] == 200
        nats_server.stop()
        deadline = time.monotonic() + 10
        while healthz()[0] != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        code, body = healthz()
        assert code == 503 and any("NATS at nats://127.0.0.1:" in problem for problem in body["problems"])
        nats_server.start()
        deadline = time.monotonic() + 15
        while healthz()[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert healthz()[0] == 200
        assert asyncio.run(ask_all(a, [Job(n=1)], "jobs"))[0].n == 1


def test_the_readme_cluster_block_runs(nats_server, tmp_path):
    """README "Running on several processes": its shell block, against this test's nats-server."""
    from tests.test_readme import BLOCKS, REPO as ROOT, command, shows

    (code,) = [code for lang, code in BLOCKS if code.startswith("nats-server -js")]
    lines = code.replace("nats://127.0.0.1:4222", nats_server.url).splitlines()
    assert lines[0].startswith("nats-server -js -sd run/nats"), "the test starts its own nats-server in its place"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "organism.yaml").write_text((ROOT / "config" / "organism.yaml").read_text())
    servers: list[subprocess.Popen] = []
    try:
        steps = []
        for line in lines[1:]:
            if line.startswith("#"):
                steps[-1].expected.append(line[1:].strip())
            elif line.strip():
                steps.append(command(line))
        for step in steps:
            if step.background:
                log = tmp_path / f"member-{len(servers)}.log"
                servers.append(subprocess.Popen(step.argv, cwd=tmp_path, env=env(), stdout=open(log, "w"),
                                                stderr=subprocess.STDOUT))
                deadline = time.monotonic() + 30
                while "listening on" not in log.read_text():
                    assert servers[-1].poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
                continue
            if step.verb == "status":
                time.sleep(2.5)  # the organism-wide view is refreshed every 2 s
            done = subprocess.run(step.argv, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
            assert done.returncode == step.exit_code, done.stderr
            for expected in step.expected:
                assert shows(done.stdout, expected), f"{expected!r} not in:\n{done.stdout}"
        assert len(servers) == 2
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            assert server.wait(30) == 0


def test_a_member_puts_no_more_in_jetstream_than_its_intake_holds(nats_server, tmp_path):
    """Backpressure: an external unit keeps its place in the member's bounded intake until
    its handler has run somewhere, so a client cannot pile up work in JetStream."""
    record = tmp_path / "record.jsonl"
    config = cluster_config(extra="limits:\n  intake_capacity: 4\n")
    with member(nats_server, tmp_path, record, config) as a:
        async def load() -> tuple[list, int]:
            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    status = await _status(a)
                    capped = status["members"]["listeners"]["capped"]
                    most = max(most, capped["pending"] + capped["in_flight"])
                    await asyncio.sleep(0.3)

            watching = asyncio.create_task(watch())
            done = await ask_all(a, [Capped(n=n, sleep_ms=250) for n in range(24)], "capped")
            watching.cancel()
            return done, most

        done, most = asyncio.run(load())
        assert sorted(reply.n for reply in done) == list(range(24))
        assert 0 < most <= 4, f"{most} units of one member's clients in JetStream at once (intake_capacity: 4)"


def test_a_handler_failing_on_another_member_reaches_the_client_and_the_owners_dead_letters(nats_server, tmp_path):
    from agentserver.outbound import RemoteError
    from tests.cluster_organisms import Crash

    record = tmp_path / "record.jsonl"
    with member(nats_server, tmp_path, record) as a, member(nats_server, tmp_path, record) as b:
        async def crash() -> tuple[list, list]:
            async with connect(a.socket_path) as client:
                outcomes = await asyncio.gather(*(client.ask(Crash(n=n), to="crasher", timeout=30) for n in range(12)),
                                                return_exceptions=True)
                return outcomes, await client.deadletters()

        outcomes, letters = asyncio.run(crash())
        assert all(isinstance(outcome, RemoteError) and outcome.code == "handler" for outcome in outcomes), outcomes
        reasons = [letter["reason"] for letter in letters if letter["code"] == "handler"]
        assert len(reasons) == 12 and all("crasher raised ValueError: boom" in reason for reason in reasons)
        workers = {line["pid"] for line in records(record)}
        assert workers == {a.process.pid, b.process.pid}, "some ran on the other member, and still were told"
        assert any(f"in {b.process.pid}" in reason for reason in reasons)
        assert "crasher raised on member" in b.log and "ValueError: boom" in b.log  # the traceback: where it ran
