"""Every connection-level bound of the server, over real sockets (DESIGN.md §10).

Most run a `Server` in the test's own loop around a pump started by the `start`
fixture (fast, no subprocess); the memory test measures a server subprocess's RSS.
Each bound's test would fail on a server without it. Time bounds are liveness guards
with wide headroom, never measurements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from agentserver.outbound import HuhError
from agentserver.client import ControlError, connect
from agentserver.framing import encode_frame
from agentserver.limits import Limits
from agentserver.server import Server
from tests.hostile_corpus import envelope
from tests.server_harness import REPO, config_text, free_port
from tests.socket_support import TOKEN, Raw, ctl, echo, hello, said, serve, trickle  # noqa: F401 (serve: a fixture)
from tests.support import HANG_GUARD


# ------------------------------------------------------------------ connection cap
async def test_connections_over_the_cap_get_one_refusal_and_are_closed(serve):
    server = await serve("limits: {max_connections: 3}\n")
    clients = [await connect(server.socket_path, name=f"c{i}") for i in range(3)]
    try:
        extra = await Raw.unix(server)
        frames = await extra.closed()
        assert [said(frame)[:2] for frame in frames] == [("error", {"code": "too-many-connections", "close": "true"})]
        with pytest.raises(ControlError) as refused:
            await connect(server.socket_path, name="c3")
        assert refused.value.code == "too-many-connections"
        assert server.status()["server"]["connections_refused"] == 2
        await clients.pop().close()
        for _ in range(100):  # its socket closes on the server's side a moment later
            if server.status()["server"]["connections"] < 3:
                break
            await asyncio.sleep(0.02)
        async with connect(server.socket_path, name="c3") as late:  # a place is free again
            reply = await late.ask("<Echo><Text>in</Text></Echo>", to="echo", timeout=HANG_GUARD)
        assert reply.xml == "<Echo><Text>in</Text></Echo>"
    finally:
        for client in clients:
            await client.close()


# ------------------------------------------------------------------ deadlines
def test_the_hello_deadline_defaults_to_ten_seconds_like_rabbitmq():
    assert Limits().hello_timeout_s == 10.0


async def test_a_token_trickled_past_the_hello_deadline_is_refused(serve):
    server = await serve("limits: {hello_timeout_s: 1}\n", tcp=True)
    raw = await Raw.tcp(server)
    data = encode_frame(hello("slowpoke", token=TOKEN))
    started = time.monotonic()
    frames = await trickle(raw, data[:-1], seconds=3.0)  # all but the last byte
    assert [said(frame)[:2] for frame in frames] == [("error", {"code": "hello-timeout", "close": "true"})]
    assert time.monotonic() - started < HANG_GUARD
    assert server.status()["server"]["connections"] == 0


async def test_an_unnamed_unix_connection_has_the_hello_deadline_too(serve):
    server = await serve("limits: {hello_timeout_s: 0.5}\n")
    raw = await Raw.unix(server)
    assert [said(frame)[1]["code"] for frame in await raw.closed()] == ["hello-timeout"]


async def test_a_frame_started_but_not_finished_in_time_ends_the_connection(serve):
    server = await serve("limits: {frame_timeout_s: 1}\n")
    raw = await Raw.unix(server)
    await raw.send(hello("halfway"))
    assert said(await raw.frame())[0] == "welcome"
    body = echo("halfway")
    frames = await trickle(raw, struct.pack(">I", len(body)) + body[:40], seconds=3.0)  # trickling moves no deadline
    assert [said(frame)[:2] for frame in frames] == [("error", {"code": "frame-timeout", "close": "true"})]
    async with connect(server.socket_path, name="after") as other:  # the server serves on
        assert (await other.ask("<Echo><Text>ok</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml


async def test_an_idle_connection_is_closed_and_a_busy_one_is_not(serve, caplog):
    caplog.set_level(logging.INFO, logger="agentserver.server")
    server = await serve("limits: {idle_timeout_s: 0.6}\n")
    idle = await Raw.unix(server)
    await idle.send(hello("idler"))
    assert said(await idle.frame())[0] == "welcome"
    async with connect(server.socket_path, name="busy") as busy:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # traffic every 0.2 s keeps it open
            await busy.ask("<Echo><Text>tick</Text></Echo>", to="echo", timeout=HANG_GUARD)
            await asyncio.sleep(0.2)
        frames = await idle.closed()
        assert [said(frame)[:2] for frame in frames] == [("error", {"code": "idle-timeout", "close": "true"})]
        assert (await busy.ask("<Echo><Text>still</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    assert "refused code=idle-timeout connection=unix name=idler" in caplog.text


# ------------------------------------------------------------------ unauthenticated TCP connections
async def test_unauthenticated_oversize_frames_leave_no_dead_letters_and_a_short_log(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="agentserver.server")
    server = await serve(tcp=True)
    letters_before = server.pump.dead_letters.total
    refusals: list[str] = []

    async def one() -> None:
        raw = await Raw.tcp(server)
        try:
            await raw.write(struct.pack(">I", 2 << 20) + b"<" * 8192)
        except ConnectionError:
            pass  # closed while writing: refused already
        refusals.extend(said(frame)[1]["code"] for frame in await raw.closed())
        raw.close()

    for _ in range(12):  # 1,200 connections, 100 at a time (under max_connections)
        await asyncio.gather(*(one() for _ in range(100)))
    assert refusals == ["too-large"] * 1200
    assert server.pump.dead_letters.total == letters_before
    assert server.status()["server"]["unauthenticated_refused"] == 1200
    logged = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert len(logged) <= 5, [record.getMessage() for record in logged]
    async with connect(tcp=server.tcp, token=TOKEN, name="legit") as client:
        assert (await client.ask("<Echo><Text>ok</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml


async def test_a_non_ascii_token_is_bad_token_and_the_connection_closes(serve, caplog):
    caplog.set_level(logging.DEBUG, logger="agentserver")
    server = await serve(tcp=True)
    raw = await Raw.tcp(server)
    await raw.send(hello("eve", token="s3cr\u00e9t\u00b2"))
    frames = await raw.closed()
    assert [said(frame)[:2] for frame in frames] == [("error", {"id": "1", "code": "bad-token", "close": "true"})]
    raw = await Raw.tcp(server)  # the same bytes, not UTF-8: unreadable, refused, closed
    await raw.send(hello("eve", token="x").replace(b'token="x"', b'token="\xe9"'))
    assert [said(frame)[1]["code"] for frame in await raw.closed()] == ["malformed"]
    assert not any(record.exc_info for record in caplog.records)
    assert "Traceback" not in caplog.text and "overloaded" not in caplog.text
    with pytest.raises(ControlError) as refused:
        await connect(tcp=server.tcp, token="wrong", name="eve")
    assert refused.value.code == "bad-token"


async def test_a_frame_before_the_hello_over_tcp_is_unauthorized(serve):
    server = await serve(tcp=True)
    raw = await Raw.tcp(server)
    await raw.send(echo("mallory"), hello("mallory", token=TOKEN))
    frames = await raw.closed()
    assert [said(frame)[1]["code"] for frame in frames] == ["unauthorized"]  # one answer; the hello is never read
    assert server.pump.counters.accepted == 1  # the boot message only


# ------------------------------------------------------------------ control requests
async def test_control_ids_are_echoed_and_odd_arguments_refused_with_their_own_code(serve):
    server = await serve()
    raw = await Raw.unix(server)
    await raw.send(hello("owner", request_id="h-1"))
    welcome = said(await raw.frame())
    assert welcome[0] == "welcome" and welcome[1]["id"] == "h-1" and welcome[1]["conversation-timeout"] == "600"
    await raw.send(ctl('deadletters id="d.2" limit="\u00b2"'), ctl('status id="s:3"'), ctl('deadletters id="d.4" limit="2"'),
                   ctl('frobnicate id="f5"'))
    answers = [said(await raw.frame()) for _ in range(4)]
    assert [(kind, attrs.get("id"), attrs.get("code")) for kind, attrs, _ in answers] == [
        ("error", "d.2", "bad-argument"), ("result", "s:3", None), ("result", "d.4", None),
        ("error", "f5", "unknown-verb")]
    assert json.loads(answers[1][2])["organism"] == "test-organism"  # still usable after the refusal
    assert isinstance(json.loads(answers[2][2]), list)
    raw.close()


async def test_a_tcp_connection_sees_only_its_own_dead_letters(serve):
    server = await serve(tcp=True)
    async with connect(server.socket_path, name="local") as local, \
            connect(tcp=server.tcp, token=TOKEN, name="remote") as remote:
        for client in (local, remote):
            with pytest.raises(HuhError, match="no-route"):
                await asyncio.wait_for(client.send("<Nobody/>"), HANG_GUARD)
        everything = await local.deadletters()
        own = await remote.deadletters()
    assert {letter["sender"] for letter in everything} == {"local", "remote"}
    assert [letter["sender"] for letter in own] == ["remote"]


# ------------------------------------------------------------------ replies bound to the connection
async def test_a_reply_never_reaches_a_later_connection_with_the_same_name(serve):
    server = await serve()
    first = await connect(server.socket_path, name="alice")
    await first.send("<Slow><Seconds>0.3</Seconds></Slow>", to="slow")
    while server.pump.counters.listener("slow").running == 0:
        await asyncio.sleep(0.01)
    await first.close()  # gone before the reply exists
    async with connect(server.socket_path, name="alice") as second:  # the name is free again
        while server.pump.counters.errored["undeliverable"] == 0:  # the reply was made, and went nowhere
            await asyncio.sleep(0.01)
        reply = await second.ask("<Echo><Text>mine</Text></Echo>", to="echo", timeout=HANG_GUARD)
        letters = await second.deadletters()
        with pytest.raises(TimeoutError):  # nothing but its own reply reached the new alice
            await asyncio.wait_for(second.receive(), 0.2)
    assert reply.xml == "<Echo><Text>mine</Text></Echo>"
    assert [(letter["code"], letter["sender"]) for letter in letters] == [("undeliverable", "slow")]


# ------------------------------------------------------------------ memory
async def test_past_the_buffer_budget_large_unfinished_frames_wait_in_the_kernel(serve):
    server = await serve("limits: {max_buffered_bytes: 262144}\n")  # 256 KiB for all connections
    holders = []
    bodies = []
    for i in range(8):  # each starts a 200 KB frame and sends 150 KB of it
        raw = await Raw.unix(server)
        await raw.send(hello(f"holder-{i}"))
        assert said(await raw.frame())[0] == "welcome"
        body = envelope(f"<Echo><Text>{'y' * 200_000}</Text></Echo>", sender=f"holder-{i}")
        raw.writer.write(struct.pack(">I", len(body)) + body[:150_000])
        holders.append(raw)
        bodies.append(body)
    await asyncio.sleep(0.5)
    status = server.status()["server"]
    assert status["buffered_bytes"] <= 262_144 + 8 * 65_536 + Limits().max_connection_buffer_bytes, status
    assert status["connections_waiting_for_budget"] > 0, status
    async with connect(server.socket_path, name="small") as small:  # small frames keep flowing
        assert (await small.ask("<Echo><Text>small</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    for raw, body in zip(holders, bodies):  # the rest arrives: every frame is read in the end
        raw.writer.write(body[150_000:])
    replies = await asyncio.gather(*(raw.frame() for raw in holders))
    assert all(said(reply)[0] == "reply" for reply in replies)
    assert server.status()["server"]["buffered_bytes"] == 0
    for raw in holders:
        raw.close()


async def test_a_connection_the_pump_cannot_keep_up_with_holds_at_most_its_buffer(serve):
    server = await serve("limits: {intake_capacity: 1, max_connection_buffer_bytes: 65536, max_message_bytes: 60000}\n")
    raw = await Raw.unix(server)
    await raw.send(hello("flood"))
    assert said(await raw.frame())[0] == "welcome"
    frames = [envelope("<Slow><Seconds>0.2</Seconds></Slow>", sender="flood", to="slow") for _ in range(2000)]
    flooding = asyncio.ensure_future(raw.send(*frames))
    await asyncio.sleep(0.5)
    assert not flooding.done()  # the writer is blocked: the kernel holds the rest
    assert server.status()["server"]["buffered_bytes"] <= 65536
    flooding.cancel()
    raw.writer.transport.abort()


@pytest.mark.subprocess
def test_stalled_connections_cost_the_server_little_memory():
    """200 Unix connections each holding an unfinished ~1 MiB frame and 100 TCP connections
    that never send the token (each pushing ~1 MiB) grow the server's RSS by < 100 MiB."""
    work = Path(tempfile.mkdtemp(prefix="as-"))
    port = free_port()
    (work / "organism.yaml").write_text(config_text(tcp=f"127.0.0.1:{port}"))
    env = dict(os.environ, PYTHONPATH=str(REPO), AGENTSERVER_TOKEN=TOKEN)
    with open(work / "server.log", "w") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "agentserver", "run", "organism.yaml"], cwd=work, env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        socket_path = work / "run" / "agentserver.sock"
        deadline = time.monotonic() + HANG_GUARD
        while "listening on" not in (work / "server.log").read_text():
            assert process.poll() is None and time.monotonic() < deadline, (work / "server.log").read_text()
            time.sleep(0.05)
        growth = asyncio.run(_stall(process.pid, socket_path, port))
        assert growth < 100 * 1024, f"RSS grew by {growth / 1024:.0f} MiB"
    finally:
        process.terminate()
        assert process.wait(HANG_GUARD) == 0
        log = (work / "server.log").read_text()
        shutil.rmtree(work, ignore_errors=True)
    assert "Traceback" not in log, log[-3000:]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _stall(pid: int, socket_path: Path, port: int) -> int:
    """Open the stalled connections; return the server's RSS growth (KiB) at its peak."""
    await asyncio.sleep(0.5)
    before = _rss_kib(pid)
    body = b"x" * ((1 << 20) - 1024)
    writers = []
    for i in range(200):
        _, writer = await asyncio.open_unix_connection(str(socket_path))
        first = echo(f"holder-{i}")  # names the connection
        writer.write(encode_frame(first) + struct.pack(">I", 1 << 20) + body)
        writers.append(writer)
    for _ in range(100):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">I", 1 << 20) + body)
        writers.append(writer)
    peak = before
    for _ in range(16):  # 8 s: the server reads what it will read
        await asyncio.sleep(0.5)
        peak = max(peak, _rss_kib(pid))
    async with connect(socket_path, name="witness") as witness:  # and it still serves
        assert (await witness.ask("<Echo><Text>ok</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    for writer in writers:
        writer.transport.abort()
    return peak - before


# ------------------------------------------------------------------ stopping
async def test_stop_tells_clients_and_ends_every_task(start):
    workdir = Path(tempfile.mkdtemp(prefix="as-"))
    pump = await start(config_text())
    try:
        async with Server(pump, socket_path=workdir / "s.sock") as server:
            client = await connect(server.socket_path, name="stayer")
            raw = await Raw.unix(server)
            await raw.send(hello("rawer"))
            await raw.frame()
            ending = asyncio.ensure_future(raw.closed())
        assert not [task for task in asyncio.all_tasks() if task.get_name().startswith(("connection:", "server:"))]
        assert [said(frame)[1]["code"] for frame in await ending] == ["shutdown"]
        with pytest.raises(ControlError) as ended:
            await client.status()
        assert ended.value.code == "shutdown"
        await client.close()
        assert not (workdir / "s.sock").exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ our own bugs
async def test_a_failure_of_the_server_itself_is_logged_with_its_traceback_and_named_internal(serve, caplog,
                                                                                              monkeypatch):
    server = await serve()

    async def broken_inject(raw, **kwargs):
        raise RuntimeError("a bug in the pump")

    monkeypatch.setattr(server.pump, "inject", broken_inject)
    raw = await Raw.unix(server)
    await raw.send(hello("victim"), echo("victim"))
    frames = await raw.closed()
    assert [said(frame)[:2] for frame in frames] == [
        ("welcome", said(frames[0])[1]), ("error", {"code": "internal", "close": "true"})]
    failures = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert "a bug in the pump" in caplog.text
    assert server.status()["server"]["internal_errors"] == 1
    monkeypatch.undo()
    async with connect(server.socket_path, name="next") as client:  # the others are served on
        assert (await client.ask("<Echo><Text>ok</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
