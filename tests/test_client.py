"""The socket client against an in-process server (and, for protocol faults, a fake one):
both ways of `connect`, its owned reader task, control answers matched by id, `cancel`,
the conversation deadline from the welcome."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

from agentserver.client import Client, ControlError, connect
from agentserver.control import CONTROL_NS
from agentserver.framing import FrameDecoder, encode_frame
from agentserver.outbound import HuhError, RemoteError
from agentserver.sender import outbound_result
from tests.socket_support import TOKEN, serve  # noqa: F401 (a fixture)
from tests.support import HANG_GUARD


def reader_tasks() -> list[asyncio.Task]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("client-reader:")]


async def test_connect_works_awaited_and_as_a_context_manager(serve):
    server = await serve("limits: {conversation_timeout_s: 42}\n")
    async with connect(server.socket_path, name="plain") as client:
        assert client.conversation_timeout == 42.0 and client.max_frame == 1 << 20
        assert (await client.ask("<Echo><Text>a</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    async with await connect(server.socket_path, name="awaited") as client:
        assert (await client.ask("<Echo><Text>b</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    assert reader_tasks() == []


async def test_the_reader_task_is_started_explicitly_and_ended_by_close(serve):
    server = await serve()
    reader, writer = await asyncio.open_unix_connection(str(server.socket_path))
    client = Client(reader, writer, "explicit")
    assert reader_tasks() == []  # nothing runs until start()
    await client.start(HANG_GUARD)
    assert len(reader_tasks()) == 1
    await client.close()
    assert reader_tasks() == []
    with pytest.raises(ConnectionError):
        await client.status()


async def test_control_answers_are_matched_by_id(serve):
    server = await serve()
    async with connect(server.socket_path, name="many") as client:
        with pytest.raises(HuhError, match="no-route"):  # send returns on its ack, or raises on its <huh>
            await asyncio.wait_for(client.send("<Nobody/>"), HANG_GUARD)
        results = await asyncio.gather(client.status(), client.deadletters(1), client.status(),
                                       client.cancel("11111111-2222-4333-8444-555555555555"))
    first, letters, second, cancelled = results
    assert first["organism"] == second["organism"] == "test-organism"
    assert [letter["code"] for letter in letters] == ["no-route"]
    assert cancelled is False


async def test_cancel_ends_the_conversation_and_its_caller_hears_cancelled(serve):
    server = await serve()
    async with connect(server.socket_path, name="impatient") as client, \
            connect(server.socket_path, name="other") as other:
        thread_id = await client.send("<Slow><Seconds>30</Seconds></Slow>", to="slow")
        while server.pump.counters.listener("slow").running == 0:
            await asyncio.sleep(0.01)
        assert await other.cancel("11111111-2222-4333-8444-555555555555") is False  # no such conversation
        assert await client.cancel(thread_id) is True
        frame = await asyncio.wait_for(client.receive(), HANG_GUARD)
        assert frame.thread_id == thread_id
        with pytest.raises(RemoteError) as ended:
            outbound_result(frame)
        assert ended.value.code == "cancelled"
        assert await client.cancel(thread_id) is False  # over already
        assert (await client.ask("<Echo><Text>after</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml


async def test_an_oversize_payload_raises_too_large_before_it_is_sent(serve):
    server = await serve("limits: {max_message_bytes: 2048}\n")
    async with connect(server.socket_path, name="big") as client:
        with pytest.raises(HuhError) as refused:
            await client.ask(f"<Echo><Text>{'x' * 4000}</Text></Echo>", to="echo", timeout=HANG_GUARD)
        assert refused.value.code == "too-large"
        assert (await client.ask("<Echo><Text>small</Text></Echo>", to="echo", timeout=HANG_GUARD)).xml
    assert server.status()["server"]["frames_refused"] == 0  # it never reached the server


async def test_a_refused_hello_raises_control_error_with_the_code(serve):
    server = await serve()
    for name, code in (("echo", "forbidden-sender"), ("bad name", "forbidden-sender")):
        with pytest.raises(ControlError) as refused:
            await connect(server.socket_path, name=name)
        assert refused.value.code == code
    assert reader_tasks() == []


# ------------------------------------------------------------------ against a fake server
async def fake_server(answer):
    """A Unix server that reads the hello and answers with `answer(hello_id)` (bytes of frames)."""
    workdir = Path(tempfile.mkdtemp(prefix="as-"))

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(1 << 20)
        while not (frames := decoder.feed(await reader.read(65536))):
            pass
        hello_id = frames[0].data.split(b'id="', 1)[1].split(b'"', 1)[0].decode()
        writer.write(answer(hello_id))
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_unix_server(on_client, path=str(workdir / "fake.sock"))
    return server, workdir


def welcome(hello_id: str) -> bytes:
    return encode_frame(f'<ctl:welcome xmlns:ctl="{CONTROL_NS}" id="{hello_id}" name="me" version="1" '
                        'max-frame="1000" conversation-timeout="60"/>'.encode())


@pytest.mark.parametrize("answer,expected", [
    (lambda i: encode_frame(f'<ctl:ack xmlns:ctl="{CONTROL_NS}" seq="1"/>'.encode()) + welcome(i), None),
    (lambda i: welcome("other-id"), "the server broke the protocol"),
    (lambda i: encode_frame(f'<ctl:error xmlns:ctl="{CONTROL_NS}" code="too-many-connections" close="true">full'
                            '</ctl:error>'.encode()), "too-many-connections"),
], ids=["a frame of a later kind is no answer", "an answer to no request", "the connection refused"])
async def test_the_client_holds_the_server_to_the_protocol(answer, expected):
    server, workdir = await fake_server(answer)
    try:
        if expected is None:
            async with connect(workdir / "fake.sock", name="me", timeout=HANG_GUARD) as client:
                assert client.conversation_timeout == 60.0
        else:
            with pytest.raises(ConnectionError, match=expected):
                await connect(workdir / "fake.sock", name="me", timeout=HANG_GUARD)
        assert reader_tasks() == []
    finally:
        server.close()
        await server.wait_closed()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_the_owner_cancels_any_conversation_a_tcp_client_only_its_own(serve):
    server = await serve(tcp=True)
    async with connect(server.socket_path, name="starter") as starter, \
            connect(server.socket_path, name="owner") as owner, \
            connect(tcp=server.tcp, token=TOKEN, name="remote") as remote:
        thread_id = await starter.send("<Slow><Seconds>30</Seconds></Slow>", to="slow")
        while server.pump.counters.listener("slow").running == 0:
            await asyncio.sleep(0.01)
        assert await remote.cancel(thread_id) is False  # over TCP: not its conversation
        assert await owner.cancel(thread_id) is True  # the Unix socket's owner: `agentserver cancel THREAD`
        frame = await asyncio.wait_for(starter.receive(), HANG_GUARD)
        with pytest.raises(RemoteError) as ended:
            outbound_result(frame)
        assert ended.value.code == "cancelled"


async def test_watch_sees_every_hop_and_a_tcp_client_only_its_own(serve):
    server = await serve(tcp=True)
    async with connect(server.socket_path, name="owner") as owner, \
            connect(tcp=server.tcp, token=TOKEN, name="remote") as remote, \
            connect(server.socket_path, name="other") as other:
        owner_hops, remote_hops = owner.watch(), remote.watch()
        first_owner = asyncio.ensure_future(owner_hops.__anext__())
        first_remote = asyncio.ensure_future(remote_hops.__anext__())
        while not (owner._watches and remote._watches and owner._machine._watches and remote._machine._watches):
            await asyncio.sleep(0.01)  # both watches answered
        reply = await other.ask("<Echo><Text>someone else's</Text></Echo>", to="echo", timeout=HANG_GUARD)
        mine = await remote.ask("<Echo><Text>mine</Text></Echo>", to="echo", timeout=HANG_GUARD)
        hop = await asyncio.wait_for(first_owner, HANG_GUARD)
        assert hop["conversation"] == reply.thread_id and hop["sender"] == "other" and hop["to"] == "echo"
        assert hop["root_tag"] == "Echo" and hop["outcome"] == "handled" and hop["bytes"] > 0
        remote_hop = await asyncio.wait_for(first_remote, HANG_GUARD)
        assert remote_hop["conversation"] == mine.thread_id  # not the other client's conversation
        await owner_hops.aclose()
        await remote_hops.aclose()


async def test_a_reply_means_the_same_over_the_socket_as_in_process(serve):
    """reply.payload is the object when the client knows the class (given, or from the
    organism's config), else the element; reply.xml is text and reply.element the element."""
    from tests.server_organisms import Echo

    server = await serve()
    async with connect(server.socket_path, name="typed", payloads=[Echo]) as typed, \
            connect(server.socket_path, name="plain") as plain:
        reply = await typed.ask(Echo(text="hi"), to="echo", timeout=HANG_GUARD)
        bare = await plain.ask("<Echo><Text>hi</Text></Echo>", to="echo", timeout=HANG_GUARD)
    async with server.pump.client("local") as local:
        inproc = await local.ask(Echo(text="hi"), to="echo", timeout=HANG_GUARD)
    assert reply.payload == inproc.payload == Echo(text="hi")
    assert reply.xml == bare.xml == inproc.xml == "<Echo><Text>hi</Text></Echo>"
    assert reply.element.tag == bare.element.tag == inproc.element.tag == "Echo"
    assert bare.payload.tag == "Echo"  # no class given: the element


async def test_the_client_learns_payload_classes_from_the_config(tmp_path):
    from agentserver.client import payload_types

    config = tmp_path / "organism.yaml"
    config.write_text("organism:\n  name: x\nlisteners:\n  - name: echo\n    payload_class: tests.server_organisms.Echo\n"
                      "    handler: tests.server_organisms.handle_echo\n")
    types = payload_types(config=config)
    assert types.get("Echo") is not None and types.get("Echo").cls.__name__ == "Echo"
    with pytest.raises(TypeError):
        payload_types([int])
