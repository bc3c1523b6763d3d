"""grpc.health.v1.Health (Check, Watch, List): statuses by name, set by healthcheck.py.

Exactly the gRPC health-checking protocol: "" is the whole server; Check on
an unknown name is NOT_FOUND; Watch on an unknown name sends SERVICE_UNKNOWN
and stays open, then sends the status once the name is known; List returns
at most 100 names. grpcio's own aio servicer lacks List and cannot end its
Watch streams at shutdown, so this one is ours. Shutdown sets NOT_SERVING at
once, pushes it to every watcher, ignores later updates, and then ends the
streams. No layer wraps it (methods.py): probes answer whatever the load.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2

from metastore_core import errors
from metastore_core.server.methods import Call

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
OVERALL = ""
MAX_LIST = 100
_END = -1


class HealthService:
    """The Health servicer: statuses by name, and the Watch subscribers of each."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {OVERALL: SERVING}
        self._watchers: dict[str, set[asyncio.Queue[int]]] = {}
        self.shutting_down = False

    def set(self, name: str, status: int) -> None:
        """Set a name's status; ignored once shutdown has begun."""
        if self.shutting_down:
            return
        self._set(name, status)

    def _set(self, name: str, status: int) -> None:
        if self.statuses.get(name) == status:
            return
        self.statuses[name] = status
        for q in self._watchers.get(name, ()):
            q.put_nowait(status)

    def enter_shutdown(self) -> None:
        """Every name NOT_SERVING now, pushed to watchers; later set() calls are ignored."""
        self.shutting_down = True
        for name in list(self.statuses):
            self._set(name, NOT_SERVING)

    async def end_streams(self) -> None:
        """End every Watch stream (after they have been told NOT_SERVING)."""
        for queues in self._watchers.values():
            for q in queues:
                q.put_nowait(_END)

    # ------------------------------------------------------------------ RPCs
    async def Check(
        self, request: health_pb2.HealthCheckRequest, call: Call
    ) -> health_pb2.HealthCheckResponse:
        status = self.statuses.get(request.service)
        if status is None:
            raise errors.UnknownService(request.service)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, call: Call
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        name = request.service
        q: asyncio.Queue[int] = asyncio.Queue()
        self._watchers.setdefault(name, set()).add(q)
        try:
            last = self.statuses.get(name, SERVICE_UNKNOWN)
            yield health_pb2.HealthCheckResponse(status=last)
            # Shutdown may have begun while that first message was being sent: then its
            # NOT_SERVING waits in q and must still go out. Only a stream that began during
            # shutdown (its one message already said so, and nothing is queued) ends here.
            if self.shutting_down and q.empty():
                return
            while True:
                status = await q.get()
                if status == _END:
                    return
                if status != last:
                    last = status
                    yield health_pb2.HealthCheckResponse(status=status)
        finally:
            watchers = self._watchers.get(name)
            if watchers is not None:
                watchers.discard(q)
                if not watchers:
                    del self._watchers[name]

    async def List(self, request: health_pb2.HealthListRequest, call: Call) -> health_pb2.HealthListResponse:
        if len(self.statuses) > MAX_LIST:
            raise errors.TooManyToList(MAX_LIST)
        resp = health_pb2.HealthListResponse()
        for name, status in self.statuses.items():
            resp.statuses[name].status = status
        return resp
