"""etcdserverpb.Lease: the RPCs, and the KeepAlive streams ended cleanly at shutdown.

Expiry and checkpoints are the member's (member/leases.py); this file only
carries requests in and replies out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from metastore_core.engine.lease import check_lease_id
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.methods import Call


@dataclass(eq=False)
class _Stream:
    """An open KeepAlive stream: its task, and whether it is parked waiting for a request."""

    task: asyncio.Task[object] | None
    parked: bool = False


class LeaseService:
    """LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._streams: set[_Stream] = set()
        self._closed = False

    async def LeaseGrant(self, r: pb.LeaseGrantRequest, call: Call) -> pb.LeaseGrantResponse:
        return await self.node.lease_grant(r, call.auth)

    async def LeaseRevoke(self, r: pb.LeaseRevokeRequest, call: Call) -> pb.LeaseRevokeResponse:
        check_lease_id(r.ID)
        return await self.node.lease_revoke(r, call.auth)

    async def LeaseKeepAlive(
        self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], call: Call
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        stream = _Stream(asyncio.current_task())
        self._streams.add(stream)
        try:
            if self._closed:
                return
            stream.parked = True
            async for r in requests:
                stream.parked = False
                yield await self.node.lease_keep_alive(r.ID)
                if self._closed:
                    return
                stream.parked = True
        except asyncio.CancelledError:
            if self._closed and stream.parked:
                return  # ended by close(): finish the stream cleanly
            raise
        finally:
            self._streams.discard(stream)

    async def LeaseTimeToLive(self, r: pb.LeaseTimeToLiveRequest, call: Call) -> pb.LeaseTimeToLiveResponse:
        return self.node.lease_time_to_live(r, call.auth)

    async def LeaseLeases(self, r: pb.LeaseLeasesRequest, call: Call) -> pb.LeaseLeasesResponse:
        return self.node.lease_leases()

    async def close(self) -> None:
        """Shutdown's drain hook: end every KeepAlive stream cleanly (status OK); new ones end at once."""
        self._closed = True
        for stream in list(self._streams):
            if stream.parked and stream.task is not None:
                stream.task.cancel()
