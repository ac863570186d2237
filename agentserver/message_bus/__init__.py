"""The message bus: the pump, its pipeline steps and the registries beside it."""

from agentserver.message_bus.bootstrap import bootstrap
from agentserver.message_bus.stream_pump import PumpClosed, ShutdownReport, StreamPump

__all__ = ["StreamPump", "bootstrap", "PumpClosed", "ShutdownReport"]
