"""HTTP/1.1 for metastore's ports: a transport-free core (`Request` -> `Response`, `Router`)."""

from metastore_core.server.http.errors import BadRequest, BodyTooLarge, HeadTooLarge, HttpError
from metastore_core.server.http.limits import Limits
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.router import Handler, Route, Router

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "Handler",
    "HeadTooLarge",
    "HttpError",
    "Limits",
    "Request",
    "Response",
    "Route",
    "Router",
]
