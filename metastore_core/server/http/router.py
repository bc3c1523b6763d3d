"""Routes: a handler per (method, path); unknown paths get 404, other methods on known paths 405."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from metastore_core.server.http.messages import Request, Response

Handler = Callable[[Request], Awaitable[Response]]

# The wording Go's net/http uses, so answers read like etcd's.
NOT_FOUND = Response.text(404, "404 page not found\n")


def _normal(path: str) -> str:
    # `/health/` is `/health`, as the hand-written server before this one treated it.
    return path.rstrip("/") or "/"


@dataclass(frozen=True)
class Route:
    """One method on one path, and the coroutine that answers it."""

    method: str
    path: str
    handler: Handler


class Router:
    """Finds the handler for a request and awaits it; itself a `Handler`."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._paths: dict[str, dict[str, Handler]] = {}
        for route in routes:
            self._paths.setdefault(_normal(route.path), {})[route.method] = route.handler

    async def __call__(self, request: Request) -> Response:
        methods = self._paths.get(_normal(request.path))
        if methods is None:
            return NOT_FOUND
        handler = methods.get(request.method)
        if handler is None:
            # RFC 9110 wants Allow on a 405; etcd's health handler sends it too.
            allow = ", ".join(sorted(methods))
            return Response(405, (("content-type", "text/plain"), ("allow", allow)), b"Method Not Allowed\n")
        return await handler(request)
