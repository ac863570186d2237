"""The `system.boot` listener and the Boot message the pump sends once it starts."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from agentserver.config import OrganismConfig
from agentserver.message_bus.listeners import Listener, Routes
from agentserver.message_bus.message_state import HandlerMetadata, MessageState
from agentserver.message_bus.pipeline_context import PipelineContext
from agentserver.message_bus.responses import system_message
from agentserver.message_bus.stores import ThreadStore
from agentserver.primitives import Boot

__all__ = ["boot_listener", "boot_message", "organism_routes"]

log = logging.getLogger("agentserver.pump")


async def handle_boot(payload: Boot, metadata: HandlerMetadata) -> None:
    """The built-in `system.boot` listener: logs that the organism is up."""
    log.info("boot organism=%s listeners=%d", payload.organism_name, payload.listener_count)
    return None


def organism_routes(config: OrganismConfig) -> Routes:
    """The routing table of `config`'s listeners, with the pump's own `system.boot`."""
    routes = Routes.from_config(config)
    routes.add(boot_listener(routes))
    return routes


def boot_listener(routes: Routes) -> Listener:
    return Listener(name="system.boot", payload_type=routes.payload_types.add(Boot), handler=handle_boot,
                    system=True, description="Logs the boot message.")


def boot_message(ctx: PipelineContext, threads: ThreadStore, organism: str) -> MessageState:
    """Boot, broadcast from `system` on a conversation of its own."""
    boot = Boot(
        organism_name=organism,
        timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        listener_count=sum(1 for listener in ctx.routes.by_name.values() if not listener.system),
    )
    return system_message(ctx, boot, to=None, thread=threads.open("system", now=ctx.clock()))
