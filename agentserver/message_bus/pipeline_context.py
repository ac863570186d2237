"""What the pipeline steps may read and update: the pump's own objects, passed in.

Steps get this instead of reaching for globals; two pumps have two contexts and share
nothing. Nothing here does I/O; `clock` is injected so tests can control time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from lxml import etree

from agentserver.envelope import load_envelope_schema
from agentserver.ids import IdSource
from agentserver.message_bus.dedupe import Dedupe
from agentserver.limits import Limits
from agentserver.message_bus.listeners import Routes
from agentserver.message_bus.stores import ThreadStore
from agentserver.xmlsafe import SafeXml

__all__ = ["PipelineContext"]


@dataclass(slots=True)
class PipelineContext:
    xml: SafeXml
    envelope_schema: etree.XMLSchema
    routes: Routes
    threads: ThreadStore
    limits: Limits
    clock: Callable[[], float] = field(default=time.monotonic)
    ids: IdSource = field(default_factory=IdSource)  # message and call ids
    dedupe: Dedupe = field(default_factory=lambda: Dedupe(time.time))  # (sender, message id) accepted lately

    @classmethod
    def build(cls, limits: Limits, routes: Routes, threads: ThreadStore, clock: Callable[[], float]) -> "PipelineContext":
        """The context of a pump with these limits: its safe parsers and the packaged envelope schema."""
        return cls(xml=SafeXml.for_limits(limits), envelope_schema=load_envelope_schema(), routes=routes,
                   threads=threads, limits=limits, clock=clock)
