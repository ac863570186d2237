"""More than one process: the organism on NATS JetStream (DESIGN.md §15).

Imported only when `organism.transport` (or `run --transport`) asks for it, so an
organism without a transport needs neither NATS nor nats-py.
"""

from agentserver.transport.member import Member, TransportError, Transported

__all__ = ["Member", "TransportError", "Transported"]
