"""The message bus: the pump, its pipeline steps and the registries beside it.

`StreamPump`, `bootstrap`, `PumpClosed` and `ShutdownReport` are imported on first use
(the seed's paths `agentserver.message_bus.StreamPump` and `.bootstrap` keep working).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "StreamPump": "agentserver.message_bus.stream_pump",
    "PumpClosed": "agentserver.message_bus.flow",
    "ShutdownReport": "agentserver.message_bus.outcomes",
    "bootstrap": "agentserver.message_bus.bootstrap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentserver.message_bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # pragma: no cover
    from agentserver.message_bus.bootstrap import bootstrap
    from agentserver.message_bus.flow import PumpClosed
    from agentserver.message_bus.outcomes import ShutdownReport
    from agentserver.message_bus.stream_pump import StreamPump
