"""Seeing an organism over HTTP (DESIGN.md §13): `organism.http: 127.0.0.1:9100`.

    /metrics   Prometheus text (metrics.py), read from the pump's counters at scrape time
    /healthz   200 while the pump runs, 503 otherwise
    /status    the JSON of `agentserver status --json`
    /events    server-sent events: one `hop` per unit that ended
    /          the live page (live.html): conversations as trees of threads and hops

`HttpServer(pump, "127.0.0.1:9100")` is used as `async with`; loopback only (config.py).
"""

from agentserver.web.app import HttpServer

__all__ = ["HttpServer"]
