"""The real server in a subprocess, talked to over its socket (issue: the server)."""

import asyncio
import json
import os
import re
import signal
import socket
import struct
from pathlib import Path

import pytest

from agentserver import HuhError
from agentserver.client import ControlError, connect
from agentserver.envelope import build_envelope
from tests.server_harness import RunningServer, cli, config_text, free_port

pytestmark = pytest.mark.subprocess  # every test here runs a real server or CLI process


@pytest.fixture
def server():
    running = RunningServer(config_text()).start()
    yield running
    running.stop()
    running.cleanup()


async def test_ask_round_trip_through_two_hops(server):
    async with await connect(server.socket_path, name="alice") as client:
        reply = await client.ask("<Greeting><Name>Ada</Name></Greeting>", to="greeter", timeout=10)
    assert reply.sender == "greeter"
    assert reply.xml == "<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>"
    assert reply.payload.findtext("Text") == "HELLO, ADA!"


def test_cli_ask_prints_reply_and_exit_codes(server):
    done = cli("ask", "--socket", str(server.socket_path), "--to", "greeter", "<Greeting><Name>Ada</Name></Greeting>", cwd=server.workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>"

    refused = cli("ask", "--socket", str(server.socket_path), "<Unknown/>", cwd=server.workdir)
    assert refused.returncode == 1
    assert "no-route" in refused.stderr

    slow = cli("ask", "--socket", str(server.socket_path), "--to", "slow", "--timeout", "0.3", "<Slow><Seconds>5</Seconds></Slow>", cwd=server.workdir)
    assert slow.returncode == 2
    assert "no reply" in slow.stderr

    sent = cli("send", "--socket", str(server.socket_path), "--to", "echo", "<Echo><Text>hi</Text></Echo>", cwd=server.workdir)
    assert sent.returncode == 0, sent.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}", sent.stdout.strip())


def test_cli_without_server_says_how_to_start_one(tmp_path):
    done = cli("ask", "--socket", str(tmp_path / "none.sock"), "<Echo><Text>x</Text></Echo>", cwd=tmp_path)
    assert done.returncode == 3
    assert "python -m agentserver run" in done.stderr


async def test_send_then_reply_from_the_client_iterator(server):
    async with await connect(server.socket_path, name="bob") as client:
        thread_id = await client.send("<Echo><Text>one</Text></Echo>", to="echo")
        async for frame in client:
            break
    assert frame.kind == "reply"
    assert frame.thread_id == thread_id
    assert frame.sender == "echo"
    assert frame.payload_xml == b"<Echo><Text>one</Text></Echo>"


async def _raw_frames(path: Path, *frames: bytes, expect: int) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    for frame in frames:
        writer.write(struct.pack(">I", len(frame)) + frame)
    await writer.drain()
    answers = []
    for _ in range(expect):
        header = await asyncio.wait_for(reader.readexactly(4), 10)
        answers.append(await reader.readexactly(struct.unpack(">I", header)[0]))
    writer.close()
    return answers


def _envelope(sender: str, payload: bytes, *, to: str | None = None, thread: str = "11111111-2222-4333-8444-555555555555") -> bytes:
    from lxml import etree

    return etree.tostring(build_envelope(etree.fromstring(payload), sender=sender, to=to, thread=thread))


async def test_forged_from_naming_a_listener_gets_a_huh(server):
    # a raw connection whose first envelope claims to be a listener
    (answer,) = await _raw_frames(server.socket_path, _envelope("greeter", b"<Echo><Text>x</Text></Echo>", to="echo"), expect=1)
    assert b"<huh" in answer and b'code="forbidden-sender"' in answer
    # a named connection that later forges another name
    async with await connect(server.socket_path, name="carol") as client:
        await client.send_raw(_envelope("shouter", b"<Echo><Text>x</Text></Echo>", to="echo"))
        frame = await asyncio.wait_for(client.receive(), 10)
        assert frame.kind == "huh" and frame.code == "forbidden-sender"
        # and the connection still works
        reply = await client.ask("<Echo><Text>still here</Text></Echo>", to="echo", timeout=10)
        assert reply.xml == "<Echo><Text>still here</Text></Echo>"
    # a client may not take a listener's name at hello either
    with pytest.raises(ControlError):
        await connect(server.socket_path, name="greeter")


async def test_refused_message_reaches_dead_letters_and_status(server):
    async with await connect(server.socket_path, name="dave") as client:
        with pytest.raises(HuhError) as refused:
            await client.ask("<Echo><Wrong>x</Wrong></Echo>", to="echo", timeout=10)
        assert refused.value.code == "invalid-payload"
        status = await client.status()
        letters = await client.deadletters()
    assert status["counters"]["errored_by_reason"]["invalid-payload"] == 1
    assert status["counters"]["accepted"] == status["counters"]["handled"] + status["counters"]["errored"] + status["counters"]["in_flight"]
    assert letters[-1]["code"] == "invalid-payload" and "<Wrong>x</Wrong>" in letters[-1]["raw"]
    shown = cli("status", "--json", "--socket", str(server.socket_path), cwd=server.workdir)
    assert shown.returncode == 0 and json.loads(shown.stdout)["organism"] == "test-organism"


async def test_tcp_refuses_a_wrong_token_and_serves_the_right_one():
    port = free_port()
    running = RunningServer(config_text(tcp=f"127.0.0.1:{port}"), AGENTSERVER_TOKEN="s3cret").start()
    try:
        with pytest.raises((ControlError, ConnectionError)):
            await connect(tcp=f"127.0.0.1:{port}", token="wrong", name="eve")
        # a raw TCP connection that skips the hello is closed after its first frame
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frame = _envelope("mallory", b"<Echo><Text>x</Text></Echo>", to="echo")
        writer.write(struct.pack(">I", len(frame)) + frame)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # the server answers once, then closes
        assert b"unauthorized" in rest and b"<Echo>" not in rest
        writer.close()
        async with await connect(tcp=f"127.0.0.1:{port}", token="s3cret", name="frank") as client:
            reply = await client.ask("<Echo><Text>tcp</Text></Echo>", to="echo", timeout=10)
        assert reply.xml == "<Echo><Text>tcp</Text></Echo>"
    finally:
        running.stop()
        running.cleanup()
    assert "wrong token" in running.log


def test_tcp_without_token_refuses_to_start():
    running = RunningServer(config_text(tcp=f"127.0.0.1:{free_port()}"), wait=False)
    running.start()
    assert running.process.wait(30) == 1
    assert "AGENTSERVER_TOKEN is not set" in running.log
    running.cleanup()


def test_check_reports_a_broken_config_with_file_and_line(tmp_path):
    good = cli("check", str(Path(__file__).resolve().parent.parent / "config" / "organism.yaml"), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "<Greeting>" in good.stdout and "greeter" in good.stdout and "shouter" in good.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text(config_text().replace("    peers: [shouter]", "    peers: [shouter, nobody]").replace("  name: test-organism", "  name: test-organism\n  colour: blue"))
    done = cli("check", str(broken), cwd=tmp_path)
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert any(re.match(rf"{re.escape(str(broken))}:3: unknown key 'colour'", line) for line in lines), lines
    assert any(re.match(rf"{re.escape(str(broken))}:\d+: .*peer 'nobody'", line) for line in lines), lines


def test_schema_prints_xsd_example_and_instructions(tmp_path):
    config = Path(__file__).resolve().parent.parent / "config" / "organism.yaml"
    done = cli("schema", str(config), "greeter", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "<xs:schema" in done.stdout and "<Greeting>" in done.stdout and "## shouter" in done.stdout
    assert cli("schema", str(config), "nobody", cwd=tmp_path).returncode == 1


def test_every_verb_has_help_with_an_example(tmp_path):
    for verb in ("run", "send", "ask", "check", "schema", "status", "deadletters"):
        done = cli(verb, "--help", cwd=tmp_path)
        assert done.returncode == 0
        assert "example:" in done.stdout, verb


async def test_sigterm_during_a_burst_exits_zero_with_every_message_counted():
    running = RunningServer(config_text()).start()
    try:
        async with await connect(running.socket_path, name="burst") as client:
            for i in range(1000):  # a burst: not waiting for each ack (send_raw), one in ten refused
                raw, _ = client.envelope(f"<Echo><Text>{i}</Text></Echo>" if i % 10 else "<Echo><Bad/></Echo>", to="echo")
                await client.send_raw(raw)
            running.send_signal(signal.SIGTERM)
            # keep reading until the server closes the connection
            async def drain():
                async for _ in client:
                    pass
            await asyncio.wait_for(drain(), 30)
    finally:
        code = running.stop()
        running.cleanup()
    assert code == 0, running.log
    summary = re.search(r"stopped: accepted=(\d+) handled=(\d+) errored=(\d+) dropped=(\d+)", running.log)
    assert summary, running.log
    accepted, handled, errored, dropped = map(int, summary.groups())
    assert accepted > 0
    assert accepted == handled + errored
    assert not running.socket_path.exists()


def test_stale_socket_is_replaced_but_a_live_one_is_refused():
    running = RunningServer(config_text(), wait=False)
    # a socket file left by a crashed run: bound, never unlinked, nobody listening
    running.socket_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(running.socket_path))
    stale.close()
    assert running.socket_path.exists()
    running.start()
    running.wait_listening()
    try:
        assert "replacing stale socket" in running.log
        assert oct(os.stat(running.socket_path).st_mode & 0o777) == "0o600"
        second = RunningServer(config_text(), workdir=running.workdir, wait=False)
        second.log_path = running.workdir / "second.log"
        second.start()
        assert second.process.wait(30) == 1
        assert "another server is answering" in second.log
        # and the first one still answers
        done = cli("ask", "--socket", str(running.socket_path), "--to", "echo", "<Echo><Text>ok</Text></Echo>", cwd=running.workdir)
        assert done.returncode == 0, done.stderr
    finally:
        assert running.stop() == 0
        running.cleanup()
    assert not running.socket_path.exists()


async def test_a_client_that_does_not_read_does_not_slow_others():
    running = RunningServer(config_text("limits: {client_outbox: 20}\n")).start()
    try:
        lazy_reader, lazy_writer = await asyncio.open_unix_connection(str(running.socket_path))
        for i in range(3000):  # replies pile up for a client that never reads
            frame = _envelope("lazy", f"<Echo><Text>{'x' * 200}{i}</Text></Echo>".encode(), to="echo",
                              thread=f"11111111-2222-4333-8444-{i:012d}")
            lazy_writer.write(struct.pack(">I", len(frame)) + frame)
        await lazy_writer.drain()
        async with await connect(running.socket_path, name="busy") as client:
            for i in range(20):
                reply = await client.ask(f"<Echo><Text>{i}</Text></Echo>", to="echo", timeout=20)
                assert reply.xml == f"<Echo><Text>{i}</Text></Echo>"
            for _ in range(200):
                status = await client.status()
                if status["counters"]["in_flight"] == 0 and status["counters"]["accepted"] >= 3021:
                    break
                await asyncio.sleep(0.05)
        assert status["server"]["frames_dropped"] > 0
        assert status["counters"]["errored_by_reason"].get("undeliverable", 0) == status["server"]["frames_dropped"]
        lazy_writer.close()
    finally:
        assert running.stop() == 0
        running.cleanup()
    assert "is not reading" in running.log


async def test_a_client_that_disconnects_mid_frame_disturbs_nobody(server):
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    frame = _envelope("halfway", b"<Echo><Text>x</Text></Echo>", to="echo")
    writer.write(struct.pack(">I", len(frame)) + frame[: len(frame) // 2])
    await writer.drain()
    writer.close()
    async with await connect(server.socket_path, name="after") as client:
        reply = await client.ask("<Echo><Text>fine</Text></Echo>", to="echo", timeout=10)
    assert reply.xml == "<Echo><Text>fine</Text></Echo>"


async def test_a_connection_name_must_be_a_valid_name(server):
    with pytest.raises(ControlError):
        await connect(server.socket_path, name="bad name")


async def test_too_deep_first_frame_on_an_unnamed_connection_is_too_large(server):
    deep = b"<a>" * 10_000 + b"</a>" * 10_000
    (answer,) = await _raw_frames(server.socket_path, deep, expect=1)
    assert b"<huh" in answer and b'code="too-large"' in answer


async def test_a_fast_sender_is_slowed_by_the_server_not_reading():
    # one slow listener, a tiny intake: the server must stop reading instead of buffering
    listeners = """
listeners:
  - name: slow
    payload_class: tests.server_organisms.Slow
    handler: tests.server_organisms.handle_slow
    concurrency: 1
"""
    running = RunningServer(config_text("limits: {intake_capacity: 5}\n", listeners=listeners)).start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(running.socket_path))
        frames = [
            _envelope("flood", b"<Slow><Seconds>0.05</Seconds></Slow>", to="slow", thread=f"11111111-2222-4333-8444-{i:012d}")
            for i in range(20_000)
        ]

        async def flood() -> None:
            for frame in frames:
                writer.write(struct.pack(">I", len(frame)) + frame)
                await writer.drain()  # blocks once the server stops reading

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(1.0)  # let the flood hit the wall (a hang guard, not a timing assertion)
        async with await connect(running.socket_path, name="watcher") as client:
            status = await client.status()
        assert not flooding.done()  # the sender is blocked, not finished
        assert status["counters"]["queued_intake"] <= 5
        # accepted but not finished: at most the intake plus the one running handler
        # an external message keeps its intake place until its handler starts: at most the
        # intake (5), the running handler's message (1) and its reply on the way back (1)
        assert status["counters"]["in_flight"] <= 5 + 1 + 1
        assert status["counters"]["accepted"] < 1000  # nowhere near the 20,000 sent
        flooding.cancel()
        writer.close()
    finally:
        assert running.stop() == 0
        running.cleanup()


async def test_an_oversize_ask_over_the_socket_raises_huh_like_in_process():
    running = RunningServer(config_text("limits: {max_message_bytes: 2048}\n")).start()
    try:
        async with await connect(running.socket_path, name="big") as client:
            with pytest.raises(HuhError) as refused:
                await client.ask(f"<Echo><Text>{'x' * 4000}</Text></Echo>", to="echo", timeout=10)
            assert refused.value.code == "too-large"
            reply = await client.ask("<Echo><Text>small</Text></Echo>", to="echo", timeout=10)
            assert reply.xml == "<Echo><Text>small</Text></Echo>"
    finally:
        assert running.stop() == 0
        running.cleanup()


def test_cli_send_of_an_oversize_payload_is_refused_cleanly():
    running = RunningServer(config_text("limits: {max_message_bytes: 2048}\n")).start()
    try:
        done = cli("send", "--socket", str(running.socket_path), "--to", "echo", f"<Echo><Text>{'x' * 4000}</Text></Echo>", cwd=running.workdir)
    finally:
        assert running.stop() == 0
        running.cleanup()
    assert done.returncode == 1
    assert "refused (too-large)" in done.stderr and "Traceback" not in done.stderr
