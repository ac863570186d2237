"""Hostile input over the real socket: every case is refused with a `<huh>` and the
server keeps serving (DESIGN.md §4, §6, §7).

One server (a subprocess, `python -m agentserver run`) serves the whole corpus of
tests/hostile_corpus.py; after each case an `ask` to `echo` must still answer. The
byte-level cases (an oversize header, a lying length prefix, a disconnect mid-frame)
use a raw socket. A secret file and a TCP listener that nobody may connect to stand
behind the external-entity cases: the file's content must never appear in a frame, a
dead letter or the log, and the listener must never see a connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from agentserver.client import ControlError, connect
from agentserver.framing import Frame, FrameDecoder
from agentserver.codes import CANNED
from tests.hostile_corpus import CASES, Target, envelope
from tests.server_harness import RunningServer, cli, config_text

pytestmark = pytest.mark.subprocess  # every test here runs against a real server process

MAX_BYTES = 300_000  # big enough for the quadratic-blowup frame to reach the parser
GUARD = 30.0  # hang guard only


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> tuple[Path, str]:
    marker = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path_factory.mktemp("hostile") / "secret.txt"
    path.write_text(marker)
    return path, marker


@pytest.fixture(scope="module")
def canary():
    """A TCP listener no one may connect to: the URL behind the external-entity cases."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        connection, peer = sock.accept()
    except BlockingIOError:
        pass  # nobody connected: good
    else:
        connection.close()
        pytest.fail(f"something fetched the canary URL (a connection from {peer})")
    finally:
        sock.close()


@pytest.fixture(scope="module")
def server(secret, canary):
    with RunningServer(config_text(f"limits: {{max_message_bytes: {MAX_BYTES}}}\n")) as running:
        yield running
    assert running.returncode == 0, running.log[-3000:]
    _, marker = secret
    assert marker not in running.log
    assert "Traceback" not in running.log, running.log


def target(name: str, secret, canary) -> Target:
    return Target(sender=name, secret_file=str(secret[0]), url=canary)


async def expect_echo(client, text: str = "still serving") -> None:
    reply = await client.ask(f"<Echo><Text>{text}</Text></Echo>", to="echo", timeout=GUARD)
    assert reply.xml == f"<Echo><Text>{text}</Text></Echo>"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_frame_gets_a_huh_and_the_server_keeps_serving(server, secret, canary, case):
    name = f"hostile-{uuid.uuid4().hex[:8]}"

    async def scenario():
        async with await connect(str(server.socket_path), name=name) as client:
            await client.send_raw(case.build(target(name, secret, canary)))
            frame = await asyncio.wait_for(client.receive(), GUARD)
            await expect_echo(client)
            return frame

    frame = asyncio.run(scenario())
    assert (frame.kind, frame.code) == ("huh", case.code), (case.why, frame)
    assert frame.message == CANNED[case.code]  # canned text only: no validator dump, no topology
    assert frame.sender == "system"
    assert secret[1].encode() not in frame.envelope


def test_no_secret_content_in_any_frame_dead_letter_or_status(server, secret, canary):
    """Every case again on one connection, then everything the server says is searched."""
    name = f"leakcheck-{uuid.uuid4().hex[:8]}"
    marker = secret[1].encode()

    async def scenario():
        frames = []
        async with await connect(str(server.socket_path), name=name) as client:
            for case in CASES:
                await client.send_raw(case.build(target(name, secret, canary)))
                frames.append(await asyncio.wait_for(client.receive(), GUARD))
            await expect_echo(client)
            letters = await client.deadletters()
            status = await client.status()
        return frames, letters, status

    frames, letters, status = asyncio.run(scenario())
    assert [(frame.kind, frame.code) for frame in frames] == [("huh", case.code) for case in CASES]
    assert all(marker not in frame.envelope for frame in frames)
    mine = [letter for letter in letters if letter["sender"] == name]
    assert [letter["code"] for letter in mine] == [case.code for case in CASES]
    assert marker.decode() not in json.dumps(letters)
    assert marker.decode() not in json.dumps(status)
    shown = cli("deadletters", "--json", "--socket", str(server.socket_path), "--limit", "1000", cwd=server.workdir, timeout=GUARD)
    assert shown.returncode == 0, shown.stderr
    assert str(secret[0]) in shown.stdout  # the dead letters do keep the hostile bytes ...
    assert marker.decode() not in shown.stdout  # ... never what they point at


# ------------------------------------------------------------------ byte level
def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class RawConnection:
    """A socket that speaks bytes: no hello, no client library."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(1 << 24)
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, path: Path) -> "RawConnection":
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> bytes:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), GUARD)
            if not data:
                raise ConnectionError("closed by the server")
            self.pending.extend(event.data for event in self.decoder.feed(data) if isinstance(event, Frame))
        return self.pending.pop(0)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def huh_code(data: bytes) -> str | None:
    from lxml import etree

    root = etree.fromstring(data)
    huh = root.find("huh")
    return None if huh is None else huh.get("code")


def echo_envelope(sender: str, text: str = "raw") -> bytes:
    return envelope(f"<Echo><Text>{text}</Text></Echo>", sender=sender)


def test_oversize_frame_is_refused_from_its_header_before_the_body_is_sent(server):
    name = f"raw-{uuid.uuid4().hex[:8]}"

    async def scenario():
        raw = await RawConnection.open(server.socket_path)
        await raw.write(struct.pack(">I", MAX_BYTES + 1))  # the header alone
        refusal = await raw.read_frame()  # arrives although not one body byte was sent
        await raw.write(b"x" * (MAX_BYTES + 1))  # the body is discarded as it arrives ...
        await raw.write(frame(echo_envelope(name)))  # ... and the connection stays usable
        reply = await raw.read_frame()
        await raw.close()
        return refusal, reply

    refusal, reply = asyncio.run(scenario())
    assert huh_code(refusal) == "too-large"
    assert b"<Echo><Text>raw</Text></Echo>" in reply and huh_code(reply) is None


def test_a_4_gib_announcement_is_refused_at_once_and_others_are_served(server):
    async def scenario():
        raw = await RawConnection.open(server.socket_path)
        await raw.write(b"\xff\xff\xff\xff" + b"<env:message")
        refusal = await raw.read_frame()
        async with await connect(str(server.socket_path)) as other:
            await expect_echo(other)
        await raw.close()
        return refusal

    assert huh_code(asyncio.run(scenario())) == "too-large"


def test_a_length_prefix_that_lies_short_is_refused(server):
    name = f"raw-{uuid.uuid4().hex[:8]}"

    async def scenario():
        raw = await RawConnection.open(server.socket_path)
        await raw.write(frame(echo_envelope(name, "names the connection")))
        named = await raw.read_frame()
        body = echo_envelope(name)
        cut = body.index(b"<env:thread>") + 5  # the frame ends inside <meta>: beyond repair
        await raw.write(struct.pack(">I", cut) + body)
        first, second = await raw.read_frame(), await raw.read_frame()
        async with await connect(str(server.socket_path)) as other:
            await expect_echo(other)
        await raw.close()
        return named, first, second

    named, first, second = asyncio.run(scenario())
    assert huh_code(named) is None
    # the truncated envelope is malformed; the rest, read as a header, announces ~1.7 GB
    # (the server refuses the header at once, the pump the envelope: either may come first)
    assert sorted([huh_code(first), huh_code(second)]) == ["malformed", "too-large"]


def test_a_length_prefix_that_lies_long_then_a_disconnect_loses_nothing_accepted(server):
    async def scenario():
        async with await connect(str(server.socket_path)) as watcher:
            before = await watcher.status()
            raw = await RawConnection.open(server.socket_path)
            body = echo_envelope(f"raw-{uuid.uuid4().hex[:8]}")
            await raw.write(struct.pack(">I", len(body) + 1000) + body)  # 1000 bytes never come
            await raw.close()
            await expect_echo(watcher)
            after = await watcher.status()
        return before, after

    before, after = asyncio.run(scenario())
    # the cut frame never became a message: only the watcher's ask (and its reply) were accepted
    assert after["counters"]["accepted"] - before["counters"]["accepted"] == 2
    assert after["counters"]["accepted"] == after["counters"]["handled"] + after["counters"]["errored"] + after["counters"]["in_flight"]
    assert "closed mid-frame" in server.log


def test_an_unnamed_connection_cannot_take_a_listener_or_reserved_name(server):
    name = f"raw-{uuid.uuid4().hex[:8]}"

    async def scenario():
        raw = await RawConnection.open(server.socket_path)
        codes = []
        for sender in ("echo", "system", "system.boot", "core"):
            await raw.write(frame(echo_envelope(sender)))
            codes.append(huh_code(await raw.read_frame()))
        await raw.write(frame(b"<env:message"))
        codes.append(huh_code(await raw.read_frame()))
        await raw.write(frame(echo_envelope(name)))  # a fair name is still taken afterwards
        reply = await raw.read_frame()
        await raw.close()
        return codes, reply

    codes, reply = asyncio.run(scenario())
    assert codes == ["forbidden-sender"] * 4 + ["malformed"]
    assert huh_code(reply) is None and b"<Echo><Text>raw</Text></Echo>" in reply


@pytest.mark.parametrize("name", ["echo", "system", "system.boot", "core.x"])
def test_a_hello_naming_a_listener_or_reserved_name_is_refused(server, name):
    async def scenario():
        with pytest.raises(ControlError) as refused:
            await connect(str(server.socket_path), name=name)
        async with await connect(str(server.socket_path)) as other:
            await expect_echo(other)
        return refused.value

    assert asyncio.run(scenario()).code == "forbidden-sender"


def test_a_thread_id_another_client_uses_is_a_conversation_of_its_own(server):
    """Reusing someone else's thread UUID neither joins their conversation nor steals replies."""
    shared = str(uuid.uuid4())

    async def scenario():
        async with await connect(str(server.socket_path)) as first, await connect(str(server.socket_path)) as second:
            await first.send("<Slow><Seconds>0.3</Seconds></Slow>", to="slow", thread_id=shared)
            await second.send("<Echo><Text>second</Text></Echo>", to="echo", thread_id=shared)
            got_second = await asyncio.wait_for(second.receive(), GUARD)
            got_first = await asyncio.wait_for(first.receive(), GUARD)
            await expect_echo(second)  # and nothing else was waiting for `second`
            await expect_echo(first)
            return got_first, got_second

    got_first, got_second = asyncio.run(scenario())
    assert (got_first.thread_id, got_first.sender, got_first.kind) == (shared, "slow", "reply")
    assert b"slept 0.3" in got_first.envelope
    assert (got_second.thread_id, got_second.sender) == (shared, "echo")
    assert b"<Text>second</Text>" in got_second.envelope


def test_dead_letters_are_bounded_and_shown_by_the_cli():
    config = config_text("limits: {dead_letters: 5}\n")
    with RunningServer(config) as server:
        path = str(server.socket_path)
        name = "bad-sender"

        async def scenario():
            async with await connect(path, name=name) as client:
                for n in range(8):
                    await client.send_raw(envelope(f"<Nobody><N>{n}</N></Nobody>", sender=name, to=None))
                    assert (await asyncio.wait_for(client.receive(), GUARD)).code == "no-route"
                big = envelope("<Echo><Text>" + "y" * 10_000 + "</Text></Echo>", sender=name, to="nobody")
                await client.send_raw(big)
                assert (await asyncio.wait_for(client.receive(), GUARD)).code == "no-route"
                await client.send_raw(b"\x00 not xml")
                assert (await asyncio.wait_for(client.receive(), GUARD)).code == "malformed"
                await expect_echo(client)
                return len(big)

        big_size = asyncio.run(scenario())
        shown = cli("deadletters", "--json", "--socket", path, cwd=server.workdir, timeout=GUARD)
        latest = cli("deadletters", "--json", "--socket", path, "--limit", "2", cwd=server.workdir, timeout=GUARD)
        status = cli("status", "--json", "--socket", path, cwd=server.workdir, timeout=GUARD)
    assert server.returncode == 0
    assert shown.returncode == 0 and latest.returncode == 0 and status.returncode == 0, (shown.stderr, status.stderr)
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(records) == 5  # bounded: the oldest fell off
    assert [r["code"] for r in records] == ["no-route"] * 4 + ["malformed"]
    assert all(f"<N>{n}</N>" in record["raw"] for record, n in zip(records, (5, 6, 7)))  # oldest first
    for record in records:
        assert set(record) >= {"time", "code", "reason", "step", "sender", "raw", "truncated"}
        assert record["sender"] == name and record["reason"] and datetime.fromisoformat(record["time"]).tzinfo is not None  # ISO-8601, UTC
    big = records[3]
    assert big["truncated"] is True and big_size > 4096 and len(big["raw"]) == 4096
    assert "is not a listener" in big["reason"]  # the full reason is kept here, not told to the sender
    assert records[4]["raw"] == "\x00 not xml"  # the original bytes, as they came
    assert [json.loads(line) for line in latest.stdout.splitlines()] == records[-2:]
    assert json.loads(status.stdout)["counters"]["dead_letters"] == 10  # counted, although only 5 are kept
