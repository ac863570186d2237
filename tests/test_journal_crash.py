"""kill -9 under load loses no acked message (DESIGN.md §14, the journal).

A client sends 3,000 messages to a recording handler over the socket and notes which
were acked. After about 1,000 acks the server is killed with SIGKILL and started again
on the same journal. Every acked message must be recorded at least once; a message
recorded twice was in a handler when the process died, so duplicates are at most the
handlers that could have been running, and the second record says `redelivered`.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import pytest

from agentserver.client import connect
from tests.server_harness import RunningServer, cli, config_text

LISTENERS = """
listeners:
  - name: recorder
    payload_class: tests.server_organisms.Entry
    handler: tests.server_organisms.handle_record
"""
TOTAL = 3000
KILL_AFTER = 1000
WINDOW = 64  # sends in flight at once
MAX_HANDLERS = 16


def read_records(path) -> list[tuple[int, bool, str]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        n, redelivered, message_id = line.split()
        records.append((int(n), redelivered == "1", message_id))
    return records


@pytest.mark.subprocess
def test_kill_9_under_load_loses_no_acked_message(tmp_path):
    record = tmp_path / "record.txt"
    config = config_text("max_concurrent_handlers: %d\n" % MAX_HANDLERS, listeners=LISTENERS).replace(
        "  socket: run/agentserver.sock\n", "  socket: run/agentserver.sock\n  journal: state/journal.db\n")
    acked: dict[int, str] = {}  # n -> message id

    with RunningServer(config, AGENTSERVER_TEST_RECORD=str(record)) as server:
        workdir = server.workdir

        async def load() -> None:
            async with connect(server.socket_path, name="loader") as client:
                window = asyncio.Semaphore(WINDOW)
                killed = asyncio.Event()

                async def one(n: int) -> None:
                    try:
                        accepted = await client.send(f"<Entry><N>{n}</N></Entry>", to="recorder", timeout=30)
                    except (ConnectionError, TimeoutError):
                        return  # not acked: it may or may not come through
                    finally:
                        window.release()
                    acked[n] = accepted.message_id
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        server.send_signal(signal.SIGKILL)

                tasks = []
                for n in range(TOTAL):
                    await window.acquire()
                    if killed.is_set() or client._ended is not None:
                        window.release()
                        break
                    tasks.append(asyncio.create_task(one(n)))
                await asyncio.gather(*tasks)

        asyncio.run(load())
        server.stop()
    assert server.returncode == -signal.SIGKILL, server.log[-2000:]
    assert KILL_AFTER <= len(acked) < TOTAL

    with RunningServer(config, workdir=workdir, AGENTSERVER_TEST_RECORD=str(record)) as again:
        async def until_idle() -> dict:
            async with connect(again.socket_path, name="watcher") as client:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    status = await client.status()
                    if status["counters"]["in_flight"] == 0 and status["counters"]["queued"] == 0:
                        return status
                    await asyncio.sleep(0.05)
                raise TimeoutError(f"the replay did not finish: {status}")

        status = asyncio.run(until_idle())
    assert status["journal"]["replayed_at_start"] >= 1, status

    records = read_records(record)
    by_n: dict[int, list[tuple[bool, str]]] = collections.defaultdict(list)
    for n, redelivered, message_id in records:
        by_n[n].append((redelivered, message_id))
    missing = sorted(set(acked) - set(by_n))
    assert not missing, f"{len(missing)} acked messages never handled, e.g. {missing[:10]}"
    for n, message_id in acked.items():
        assert all(seen_id == message_id for _, seen_id in by_n[n]), n  # the same id, replayed or not
    duplicates = {n: seen for n, seen in by_n.items() if len(seen) > 1}
    assert len(duplicates) <= MAX_HANDLERS, duplicates
    for n, seen in duplicates.items():
        assert [redelivered for redelivered, _ in seen[1:]] == [True] * (len(seen) - 1), (n, seen)


@pytest.mark.subprocess
def test_run_refuses_a_damaged_journal_naming_its_path(tmp_path):
    config = config_text(listeners=LISTENERS).replace(
        "  socket: run/agentserver.sock\n", "  socket: run/agentserver.sock\n  journal: journal.db\n")
    (tmp_path / "organism.yaml").write_text(config)
    (tmp_path / "journal.db").write_bytes(b"SQLite format 3\x00" + b"\x07" * 8192)
    done = cli("run", "organism.yaml", cwd=tmp_path)
    assert done.returncode != 0
    assert "journal.db" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "journal.db").stat().st_size == 8192 + 16  # kept as it was
