"""agentserver: an XML message pump for multi-agent systems.

Write a payload (`@xmlify` dataclass) and an async handler, list them in
`config/organism.yaml`, and run `python -m agentserver run config/organism.yaml`.

The names below are imported on first use, so `import agentserver.framing` (or the
CLI) does not pay for lxml, aiostream, xmlable and yaml.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "HandlerMetadata": "agentserver.message_bus.message_state",
    "HandlerResponse": "agentserver.message_bus.message_state",
    "HistoryEntry": "agentserver.message_bus.message_state",
    "SystemError": "agentserver.primitives",
    "Boot": "agentserver.primitives",
    "TodoUntil": "agentserver.primitives",
    "TodoComplete": "agentserver.primitives",
    "StreamPump": "agentserver.message_bus.stream_pump",
    "PumpClosed": "agentserver.message_bus.flow",
    "ShutdownReport": "agentserver.message_bus.outcomes",
    "bootstrap": "agentserver.message_bus.bootstrap",
    "ConfigError": "agentserver.config",
    "OrganismConfig": "agentserver.config",
    "load_config": "agentserver.config",
    "Limits": "agentserver.limits",
    "ErrorCode": "agentserver.codes",
    "PeerError": "agentserver.message_bus.calls",
    "Reply": "agentserver.outbound",
    "AskError": "agentserver.outbound",
    "HuhError": "agentserver.outbound",
    "RemoteError": "agentserver.outbound",
    "AskTimeout": "agentserver.outbound",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentserver' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from agentserver.codes import ErrorCode
    from agentserver.config import ConfigError, OrganismConfig, load_config
    from agentserver.limits import Limits
    from agentserver.message_bus.calls import PeerError
    from agentserver.message_bus.bootstrap import bootstrap
    from agentserver.message_bus.message_state import HandlerMetadata, HandlerResponse, HistoryEntry
    from agentserver.message_bus.flow import PumpClosed
    from agentserver.message_bus.outcomes import ShutdownReport
    from agentserver.message_bus.stream_pump import StreamPump
    from agentserver.outbound import AskError, AskTimeout, HuhError, Reply, RemoteError
    from agentserver.primitives import Boot, SystemError, TodoComplete, TodoUntil
