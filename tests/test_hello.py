"""The hello-world organism in config/organism.yaml, as shipped."""

import os
import sys
from pathlib import Path

from agentserver import bootstrap
from agentserver.examples.hello import Greeting, GreetingReply
from tests.support import HANG_GUARD, assert_counters

CONFIG = Path(__file__).resolve().parent.parent / "config" / "organism.yaml"


async def test_the_hello_organism_answers_an_in_process_ask():
    async with bootstrap(CONFIG) as pump:
        async with pump.client("tester") as client:
            reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=HANG_GUARD)
            as_text = await client.ask("<Greeting><Name>Bob</Name></Greeting>", to="greeter", timeout=HANG_GUARD)
        report = await pump.shutdown(HANG_GUARD)
    assert reply.payload == GreetingReply(text="HELLO, ADA!")
    assert reply.sender == "greeter" and reply.xml == "<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>"
    assert as_text.payload.text == "HELLO, BOB!"
    assert (report.clean, report.dropped, report.errored) == (True, 0, 0)
    # the greeter awaits the shouter: one handler call per greeting (the answer resumes it)
    assert pump.counters.listener("shouter").handled == 2 and pump.counters.listener("greeter").handled == 2
    assert_counters(pump)


def test_bootstrap_reads_dot_env_into_the_config_and_changes_nothing_process_wide(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTSERVER_TEST_SETTING", raising=False)
    monkeypatch.setenv("AGENTSERVER_TEST_KEPT", "from the environment")
    (tmp_path / ".env").write_text("AGENTSERVER_TEST_SETTING=from-dotenv\nAGENTSERVER_TEST_KEPT=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    pump = bootstrap(CONFIG)
    assert pump.config.env["AGENTSERVER_TEST_SETTING"] == "from-dotenv"
    assert pump.config.env["AGENTSERVER_TEST_KEPT"] == "from the environment"  # never overridden
    assert "AGENTSERVER_TEST_SETTING" not in os.environ and sys.path == path_before
    assert sorted(pump.routes.by_name) == ["greeter", "shouter", "system.boot"]


def test_the_cli_entry_point_loads_dot_env_into_the_process(tmp_path, monkeypatch):
    from agentserver.startup import prepare_process

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("AGENTSERVER_TEST_SETTING", raising=False)
    monkeypatch.setenv("AGENTSERVER_TEST_KEPT", "from the environment")
    (tmp_path / ".env").write_text("AGENTSERVER_TEST_SETTING=from-dotenv\nAGENTSERVER_TEST_KEPT=from-dotenv\n")
    try:
        prepare_process(tmp_path)
        assert os.environ["AGENTSERVER_TEST_SETTING"] == "from-dotenv"
        assert os.environ["AGENTSERVER_TEST_KEPT"] == "from the environment"  # never overridden
        assert sys.path[0] == str(tmp_path)
    finally:
        os.environ.pop("AGENTSERVER_TEST_SETTING", None)


async def test_the_returning_style_greeter_answers_the_same(start):
    from tests.support import organism

    text = organism(
        {"name": "greeter", "payload_class": "agentserver.examples.hello.Greeting",
         "handler": "agentserver.examples.hello.handle_greeting_returning", "agent": True, "peers": ["shouter"]},
        {"name": "shouter", "payload_class": "agentserver.examples.hello.Shout", "handler": "agentserver.examples.hello.handle_shout"},
    )
    pump = await start(text)
    async with pump.client("tester") as client:
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=HANG_GUARD)
    assert reply.payload == GreetingReply(text="HELLO, ADA!")
    assert pump.counters.listener("greeter").handled == 2  # called once for the Greeting, once for the Shouted
