"""HTTP/1.1 on h11: a transport-free core (`Request` -> `Response`, `Router`), a thin asyncio shell
(`HttpServer`, one `Connection` per socket, under `Limits`), and the metrics port's routes."""

from metastore_core.server.http.errors import BadRequest, BodyTooLarge, Busy, HeadTooLarge, HttpError
from metastore_core.server.http.limits import Limits
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.metrics_port import HealthFn, HttpEndpoint, MetricsRoutes, ProbeSet
from metastore_core.server.http.router import Handler, Route, Router
from metastore_core.server.http.server import HttpServer

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "Busy",
    "Handler",
    "HeadTooLarge",
    "HealthFn",
    "HttpEndpoint",
    "HttpError",
    "HttpServer",
    "Limits",
    "MetricsRoutes",
    "ProbeSet",
    "Request",
    "Response",
    "Route",
    "Router",
]
