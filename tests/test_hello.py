"""The hello-world organism in config/organism.yaml, as shipped."""

import asyncio
import os
import sys
from pathlib import Path

from agentserver import bootstrap
from agentserver.examples.hello import Greeting, GreetingReply
from tests.support import HANG_GUARD, assert_counters

CONFIG = Path(__file__).resolve().parent.parent / "config" / "organism.yaml"


async def test_the_hello_organism_answers_an_in_process_ask():
    pump = bootstrap(CONFIG)
    task = asyncio.create_task(pump.run())
    async with pump.client("tester") as client:
        reply = await client.ask(Greeting(name="Ada"), to="greeter", timeout=HANG_GUARD)
        as_text = await client.ask("<Greeting><Name>Bob</Name></Greeting>", to="greeter", timeout=HANG_GUARD)
    report = await pump.shutdown(HANG_GUARD)
    await task
    assert reply.payload == GreetingReply(text="HELLO, ADA!")
    assert reply.sender == "greeter" and reply.xml == b"<GreetingReply><Text>HELLO, ADA!</Text></GreetingReply>"
    assert as_text.payload.text == "HELLO, BOB!"
    assert (report.clean, report.dropped, report.errored) == (True, 0, 0)
    assert pump.counters.listener("shouter").handled == 2 and pump.counters.listener("greeter").handled == 4
    assert_counters(pump)


def test_bootstrap_loads_dot_env_from_the_working_directory_first(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("AGENTSERVER_TEST_SETTING", raising=False)
    monkeypatch.setenv("AGENTSERVER_TEST_KEPT", "from the environment")
    (tmp_path / ".env").write_text("AGENTSERVER_TEST_SETTING=from-dotenv\nAGENTSERVER_TEST_KEPT=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    try:
        pump = bootstrap(CONFIG)
        assert os.environ["AGENTSERVER_TEST_SETTING"] == "from-dotenv"
        assert os.environ["AGENTSERVER_TEST_KEPT"] == "from the environment"  # never overridden
        assert sorted(pump.routes.by_name) == ["greeter", "shouter", "system.boot"]
    finally:
        os.environ.pop("AGENTSERVER_TEST_SETTING", None)
