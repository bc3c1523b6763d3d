"""The metrics port (--listen-metrics-urls): /metrics, /health, /readyz and /livez.

/health answers like etcd's: 200 {"health":"true"} or 503 {"health":"false","reason":...} while
an alarm is active (`?exclude=NOSPACE` ignores that one) or the daemon is not serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from metastore_core.server.http.limits import Limits
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.router import Route, Router
from metastore_core.server.http.server import HttpServer

HealthFn = Callable[[set[str]], tuple[bool, str]]  # (excluded alarm names) -> (healthy, reason)
ReadyFn = Callable[[], tuple[bool, str]]


def health_route(health: HealthFn) -> Route:
    """GET /health as etcd's: alarms and serving state, with `exclude=NAME[,NAME]` ignoring alarms."""

    async def health_check(request: Request) -> Response:
        exclude = {name.upper() for value in request.query.get("exclude", []) for name in value.split(",")}
        ok, reason = health(exclude)
        return Response.json(200 if ok else 503, {"health": "true" if ok else "false", "reason": reason})

    return Route("GET", "/health", health_check)


class MetricsRoutes:
    """The handlers of the metrics port, over a registry and the daemon's health figures."""

    def __init__(self, registry: CollectorRegistry, health: HealthFn, ready: ReadyFn) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready

    def routes(self) -> list[Route]:
        """Every path of the port, GET only."""
        return [
            Route("GET", "/metrics", self.metrics),
            health_route(self.health),
            Route("GET", "/readyz", self.readyz),
            Route("GET", "/livez", self.livez),
        ]

    async def metrics(self, request: Request) -> Response:
        """The registry in Prometheus text format."""
        # Collecting walks every metric (and reads /proc): keep it off the event loop.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(200, (("content-type", CONTENT_TYPE_LATEST),), body)

    async def readyz(self, request: Request) -> Response:
        """200 `ok` while serving, else 503 with the reason."""
        ok, reason = self.ready()
        return Response.text(200, "ok\n") if ok else Response.text(503, f"{reason}\n")

    async def livez(self, request: Request) -> Response:
        """200 while the process answers at all."""
        return Response.text(200, "ok\n")


class HttpEndpoint(HttpServer):
    """The metrics port: serves the registry and the health figures on one or more addresses."""

    def __init__(
        self, registry: CollectorRegistry, health: HealthFn, ready: ReadyFn, limits: Limits | None = None
    ) -> None:
        super().__init__(Router(MetricsRoutes(registry, health, ready).routes()), limits)
