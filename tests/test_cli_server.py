"""The CLI against a real server (issue 11): --json, refusals with their full reason,
cancel, the ask timeout default and the exit codes. Most verbs run in-process through
`main(argv)`; the server runs in a subprocess."""

import json
from datetime import datetime

import pytest

from agentserver.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, main
from tests.server_harness import RunningServer, cli, config_text

pytestmark = pytest.mark.subprocess

CONVERSATION_TIMEOUT_S = 7.0


@pytest.fixture(scope="module")
def server():
    running = RunningServer(config_text(f"limits: {{conversation_timeout_s: {CONVERSATION_TIMEOUT_S}}}\n")).start()
    yield running
    running.stop()
    running.cleanup()


def run(capsys, server, verb: str, *argv: str) -> tuple[int, str, str]:
    code = main([verb, "--socket", str(server.socket_path), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_json_prints_thread_sender_and_xml(capsys, server):
    code, out, err = run(capsys, server, "ask", "--to", "greeter", "--json", "<Greeting><Name>Ada</Name></Greeting>")
    assert code == EXIT_OK, err
    reply = json.loads(out)
    assert reply["sender"] == "greeter" and reply["xml"] == "<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>"
    assert len(reply["thread"]) == 36


def test_a_refusal_prints_its_thread_and_the_full_reason(capsys, server):
    code, out, err = run(capsys, server, "ask", "--to", "echo", "<Echo><Wrong>x</Wrong></Echo>")
    assert code == EXIT_FAILED and out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("refused (invalid-payload) thread=")
    thread = err.split("thread=")[1].split(":")[0]
    assert len(thread) == 36
    assert "; reason: " in err and "Wrong" in err.split("; reason: ")[1]  # the schema's words, not the canned text

    code, out, err = run(capsys, server, "send", "--to", "echo", "<Echo><Wrong>y</Wrong></Echo>")
    assert code == EXIT_FAILED and err.startswith("refused (invalid-payload) thread=") and "; reason: " in err


def test_status_text_and_json(capsys, server):
    code, out, err = run(capsys, server, "status")
    assert code == EXIT_OK, err
    assert out.startswith("organism test-organism") and "LISTENER" in out and "slow" in out  # idle listeners too
    assert "open conversations:" in out
    code, out, _ = run(capsys, server, "status", "--json")
    status = json.loads(out)
    assert code == EXIT_OK and status["organism"] == "test-organism" and "uptime_s" in status


def test_deadletters_text_and_json_with_iso_times(capsys, server):
    run(capsys, server, "send", "--to", "echo", "<Echo><Wrong>z</Wrong></Echo>")
    code, out, err = run(capsys, server, "deadletters", "--limit", "1", "--json")
    assert code == EXIT_OK, err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["code"] == "invalid-payload" and datetime.fromisoformat(record["time"]).tzinfo is not None
    code, out, _ = run(capsys, server, "deadletters", "--limit", "1")
    (line,) = out.splitlines()
    time, code_word = line.split()[:2]
    assert datetime.fromisoformat(time).tzinfo is not None and code_word == "invalid-payload"
    assert f"thread={record['conversation']}" in line and "Wrong" in line


def test_cancel_exits_1_for_no_such_conversation(capsys, server):
    code, out, err = run(capsys, server, "cancel", "00000000-0000-0000-0000-000000000000")
    assert code == EXIT_FAILED and "no open conversation" in err


def test_cancel_ends_a_conversation_started_by_another_client(capsys, server):
    """`agentserver cancel` runs on a connection of its own: as the socket's owner it may
    cancel any open conversation, and the client that started it hears `cancelled`."""
    import asyncio

    from agentserver.client import connect
    from agentserver.outbound import RemoteError

    async def scenario() -> tuple[int, str, str]:
        async with connect(server.socket_path, name="starter") as starter:
            asking = asyncio.create_task(starter.ask("<Slow><Seconds>30</Seconds></Slow>", to="slow", timeout=20))
            while not (shown := (await starter.status())["conversations"]["shown"]):
                await asyncio.sleep(0.02)
            thread = shown[0]["id"]
            result = await asyncio.to_thread(run, capsys, server, "cancel", thread)
            with pytest.raises(RemoteError) as ended:
                await asyncio.wait_for(asking, 10)
            assert ended.value.code == "cancelled"
            return result

    code, out, err = asyncio.run(scenario())
    assert code == EXIT_OK and "cancelled" in out, err


def test_ask_waits_for_the_announced_conversation_timeout_plus_a_margin(capsys, server, monkeypatch):
    from agentserver.client import Client

    seen = {}
    real_ask = Client.ask

    async def ask(self, payload, **kwargs):
        seen["timeout"] = kwargs["timeout"]
        return await real_ask(self, payload, **kwargs)

    monkeypatch.setattr(Client, "ask", ask)
    code, _, err = run(capsys, server, "ask", "--to", "echo", "<Echo><Text>t</Text></Echo>")
    assert code == EXIT_OK, err
    assert seen["timeout"] == CONVERSATION_TIMEOUT_S + 5
    run(capsys, server, "ask", "--to", "echo", "--timeout", "3", "<Echo><Text>t</Text></Echo>")
    assert seen["timeout"] == 3


def test_the_server_timeout_error_arrives_before_the_cli_gives_up(capsys, server):
    code, _, err = run(capsys, server, "ask", "--to", "slow", "<Slow><Seconds>30</Seconds></Slow>")
    assert code == EXIT_FAILED and err.startswith("failed (conversation-timeout) thread="), err


def test_timeout_and_unreachable_codes(capsys, server, tmp_path):
    code, _, err = run(capsys, server, "ask", "--to", "slow", "--timeout", "0.3", "<Slow><Seconds>2</Seconds></Slow>")
    assert code == EXIT_TIMEOUT and "no reply within 0.3s" in err
    for verb, *argv in (("status",), ("cancel", "00000000-0000-0000-0000-000000000000"),
                        ("ask", "<Echo><Text>x</Text></Echo>")):
        code = main([verb, "--socket", str(tmp_path / "none.sock"), *argv])
        assert code == EXIT_UNREACHABLE and "no server answers" in capsys.readouterr().err


def test_run_exits_4_on_a_broken_config_like_check(tmp_path):
    (tmp_path / "broken.yaml").write_text("organism:\n  name: x\n  colour: blue\nlisteners: []\n")
    ran = cli("run", "broken.yaml", cwd=tmp_path)
    checked = cli("check", "broken.yaml", cwd=tmp_path)
    assert ran.returncode == checked.returncode == EXIT_CONFIG, (ran.stderr, checked.stderr)
    assert "broken.yaml:3: unknown key 'colour'" in ran.stderr and "Traceback" not in ran.stderr


def test_malformed_xml_through_the_real_entry_point_is_one_line(server):
    done = cli("ask", "--socket", str(server.socket_path), "--to", "echo", "<Echo><Text>x</Echo>", cwd=server.workdir)
    assert done.returncode == EXIT_FAILED and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("not a payload: ")


def test_watch_prints_the_hops_of_a_conversation(capsys, server):
    import asyncio

    from agentserver.client import connect

    async def scenario() -> tuple[int, str, str]:
        watching = asyncio.ensure_future(asyncio.to_thread(run, capsys, server, "watch", "--json", "--count", "2"))
        async with connect(server.socket_path, name="watched") as client:
            while not watching.done():  # until the watch has started and seen both hops
                await client.ask("<Greeting><Name>Ada</Name></Greeting>", to="greeter", timeout=10)
                await asyncio.sleep(0.1)
        return await asyncio.wait_for(watching, 10)

    code, out, err = asyncio.run(scenario())
    assert code == EXIT_OK, err
    hops = [json.loads(line) for line in out.splitlines()]
    assert len(hops) == 2 and all(hop["outcome"] == "handled" for hop in hops)
    assert {hop["root_tag"] for hop in hops} <= {"Greeting", "Shout", "Shouted", "GreetingReply"}
