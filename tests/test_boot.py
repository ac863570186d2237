"""boot.py: the pump's own `system.boot` listener and the Boot broadcast it hears once."""

import logging
from datetime import datetime

from agentserver import load_config
from agentserver.message_bus.boot import boot_message, handle_boot, organism_routes
from agentserver.message_bus.message_state import HandlerMetadata, OriginKind
from agentserver.primitives import Boot
from tests.support import listener, organism, pump_for

ECHO = listener("echo", "Echo", "echo")
NEWS = listener("news_a", "News", "news_a")


def test_the_routes_are_the_config_listeners_plus_system_boot():
    routes = organism_routes(load_config("test-organism.yaml", text=organism(ECHO, NEWS)))
    assert sorted(routes.by_name) == ["echo", "news_a", "system.boot"]
    boot = routes.by_name["system.boot"]
    assert boot.system and boot.handler is handle_boot
    assert [l.name for l in routes.by_tag["Boot"]] == ["system.boot"]


def test_the_boot_message_is_a_broadcast_from_system_on_its_own_conversation():
    pump = pump_for(ECHO, NEWS, name="my-org")
    state = boot_message(pump.ctx, pump.stores.threads, "my-org")
    assert state.origin.kind is OriginKind.SYSTEM and state.sender == "system" and state.to is None
    assert not state.is_error_report and state.prebuilt
    assert state.thread.chain == ("system",) and state.conversation is state.thread.conversation
    assert state.conversation.pending == 1
    (routed,) = pump.pipeline.feed([state])
    assert routed.error is None and routed.route.listener.name == "system.boot"
    boot = routed.payload
    assert (boot.organism_name, boot.listener_count) == ("my-org", 2)  # system.boot itself is not counted
    assert datetime.fromisoformat(boot.timestamp).utcoffset().total_seconds() == 0


def test_every_boot_message_has_a_conversation_of_its_own():
    pump = pump_for(ECHO)
    first = boot_message(pump.ctx, pump.stores.threads, "org")
    second = boot_message(pump.ctx, pump.stores.threads, "org")
    assert first.conversation is not second.conversation and first.thread.id != second.thread.id


async def test_the_boot_listener_logs_and_answers_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="agentserver.pump"):
        result = await handle_boot(Boot("org", "2026-01-01T00:00:00+00:00", 3), HandlerMetadata("t", "system"))
    assert result is None
    assert "boot organism=org listeners=3" in caplog.text
