"""The metrics port (--listen-metrics-urls): /metrics, /health, /readyz and /livez.

/health answers like etcd's: 200 {"health":"true"} or 503 {"health":"false","reason":...} while
an alarm is active (`?exclude=NOSPACE` ignores that one) or the daemon is not serving.
/livez and /readyz answer like etcd 3.6's: `ok` (200) when every check passes, `?verbose` adds a
`[+]name ok` line per check, a failure is 503 with every check's line (`[-]name failed: why`),
`?exclude=name` skips a check and `/readyz/name` runs that one alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from metastore_core.server.http.limits import Limits
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.router import Route, Router
from metastore_core.server.http.server import HttpServer

HealthFn = Callable[[set[str]], tuple[bool, str]]  # (excluded alarm names) -> (healthy, reason)


def health_route(health: HealthFn) -> Route:
    """GET /health as etcd's: alarms and serving state, with `exclude=NAME[,NAME]` ignoring alarms.

    The metrics port and the gateway's client port serve the same route."""

    async def health_check(request: Request) -> Response:
        exclude = {name.upper() for value in request.query.get("exclude", []) for name in value.split(",")}
        ok, reason = health(exclude)
        return Response.json(200 if ok else 503, {"health": "true" if ok else "false", "reason": reason})

    return Route("GET", "/health", health_check)


class ProbeSet(Protocol):
    """Named checks run per request (server/healthcheck.Probes): kind is the path, /livez or /readyz."""

    kind: str
    names: list[str]

    async def run(self, names: Sequence[str]) -> tuple[bool, str]: ...


class MetricsRoutes:
    """The handlers of the metrics port, over a registry and the daemon's health figures."""

    def __init__(self, registry: CollectorRegistry, health: HealthFn, probes: Sequence[ProbeSet]) -> None:
        self.registry = registry
        self.health = health
        self.probes = probes

    def routes(self) -> list[Route]:
        """Every path of the port, GET only."""
        out = [Route("GET", "/metrics", self.metrics), health_route(self.health)]
        for p in self.probes:
            out.append(Route("GET", f"/{p.kind}", self._all(p)))
            out += [Route("GET", f"/{p.kind}/{name}", self._one(p, name)) for name in p.names]
        return out

    async def metrics(self, request: Request) -> Response:
        """The registry in Prometheus text format."""
        # Collecting walks every metric (and reads /proc): keep it off the event loop.
        body = await asyncio.to_thread(generate_latest, self.registry)
        return Response(200, (("content-type", CONTENT_TYPE_LATEST),), body)

    def _all(self, probes: ProbeSet) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            skip = {n for value in request.query.get("exclude", []) for n in value.split(",") if n}
            return await _probe(probes, [n for n in probes.names if n not in skip], request)

        return handle

    def _one(self, probes: ProbeSet, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await _probe(probes, [name], request)

        return handle


async def _probe(probes: ProbeSet, names: Sequence[str], request: Request) -> Response:
    ok, text = await probes.run(names)
    if not ok:  # every check's line, whatever was asked (etcd writes it through http.Error)
        return Response.text(503, text + "\n")
    return Response.text(200, (text if "verbose" in request.query else "") + "ok\n")


class HttpEndpoint(HttpServer):
    """The metrics port: serves the registry and the health figures on one or more addresses."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthFn,
        probes: Sequence[ProbeSet],
        limits: Limits | None = None,
    ) -> None:
        super().__init__(Router(MetricsRoutes(registry, health, probes).routes()), limits)
