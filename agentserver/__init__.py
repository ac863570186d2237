"""agentserver: an XML message pump for multi-agent systems.

Write a payload (`@xmlify` dataclass) and an async handler, list them in
`config/organism.yaml`, and run `python -m agentserver run config/organism.yaml`.
"""

from agentserver.config import ConfigError, OrganismConfig, load_config
from agentserver.message_bus.bootstrap import bootstrap
from agentserver.message_bus.message_state import HandlerMetadata, HandlerResponse, HistoryEntry
from agentserver.message_bus.stream_pump import PumpClosed, ShutdownReport, StreamPump
from agentserver.outbound import AskError, AskTimeout, HuhError, RemoteError, Reply
from agentserver.primitives import Boot, SystemError, TodoComplete, TodoUntil

__version__ = "0.1.0"

__all__ = [
    "HandlerMetadata",
    "HandlerResponse",
    "HistoryEntry",
    "SystemError",
    "Boot",
    "TodoUntil",
    "TodoComplete",
    "StreamPump",
    "bootstrap",
    "PumpClosed",
    "ShutdownReport",
    "ConfigError",
    "OrganismConfig",
    "load_config",
    "Reply",
    "AskError",
    "HuhError",
    "RemoteError",
    "AskTimeout",
]
