"""metastore.admin.v1.Admin: the operator RPCs behind `metastore stats` and `metastore stop`."""

from __future__ import annotations

import os

from metastore_core.pb.metastore.admin.v1 import admin_pb2 as apb
from metastore_core.server.figures import Figures
from metastore_core.server.lifecycle import Lifecycle
from metastore_core.server.methods import Call


class AdminService:
    """GetStats and Shutdown."""

    def __init__(self, figures: Figures, lifecycle: Lifecycle) -> None:
        self.figures = figures
        self.lifecycle = lifecycle

    async def GetStats(self, r: apb.GetStatsRequest, call: Call) -> apb.GetStatsResponse:
        return await self.figures.stats()

    async def Shutdown(self, r: apb.ShutdownRequest, call: Call) -> apb.ShutdownResponse:
        reason = r.reason or "admin Shutdown RPC"
        accepted = self.lifecycle.request(f"admin: {reason}")
        return apb.ShutdownResponse(accepted=accepted, pid=os.getpid())
