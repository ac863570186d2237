"""The pipeline steps, one per module, in pipeline order.

Each step is a plain function `step(state, ctx)` of a `MessageState` and the pump's
`PipelineContext`; fan-out steps return a list of states. Steps do no I/O and keep no
state of their own, so each is tested by feeding it bytes. A step never touches a
state whose `error` is already set.
"""

from agentserver.message_bus.steps.c14n import canonicalize
from agentserver.message_bus.steps.deserialization import deserialize
from agentserver.message_bus.steps.envelope_validation import validate_envelope
from agentserver.message_bus.steps.payload_extraction import extract_payloads
from agentserver.message_bus.steps.repair import repair
from agentserver.message_bus.steps.routing import route
from agentserver.message_bus.steps.thread_assignment import assign_thread
from agentserver.message_bus.steps.xsd_validation import validate_payload

__all__ = [
    "repair",
    "canonicalize",
    "validate_envelope",
    "extract_payloads",
    "assign_thread",
    "validate_payload",
    "deserialize",
    "route",
]
