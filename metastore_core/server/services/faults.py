"""Test-only fault injection: a service that fails or stalls on purpose.

Registered only when BOTH the hidden `--test-faults` flag is given AND the
environment has METASTORE_TEST_FAULTS=1, so no production start-up reaches
it. Its methods go through the same layers as every real RPC, so tests see
exactly what recovery and limits do to a real handler:

    /metastore.testing.Faults/Panic        unary, raises RuntimeError
    /metastore.testing.Faults/Sleep        unary, sleeps DoubleValue seconds
    /metastore.testing.Faults/Block        unary, blocks the event loop DoubleValue seconds (a
                                           CPU-bound request that never yields)
    /metastore.testing.Faults/PanicStream  server stream, one message then RuntimeError
    /metastore.testing.Faults/SlowPut      unary, sleeps 3 s, then a real Put (PutRequest)
    /metastore.testing.Faults/Unhealthy    unary, adds a health checker that always fails
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import empty_pb2, wrappers_pb2

from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2
from metastore_core.server.healthcheck import CheckResult, HealthMonitor
from metastore_core.server.methods import Call, Method, method_info

SERVICE = "metastore.testing.Faults"
ENV = "METASTORE_TEST_FAULTS"


def enabled(flag: bool) -> bool:
    """The flag alone is not enough: the environment must agree."""
    return flag and os.environ.get(ENV) == "1"


class InjectedFault(RuntimeError):
    """Raised by the fault service on purpose."""


class FaultService:
    """The methods above; each takes (request, call) like every servicer."""

    def __init__(self, node: Node, monitor: HealthMonitor) -> None:
        self.node = node
        self.monitor = monitor

    async def Panic(self, request: Any, call: Call) -> Any:
        raise InjectedFault("injected handler failure")

    async def Sleep(self, request: wrappers_pb2.DoubleValue, call: Call) -> Any:
        await asyncio.sleep(request.value)
        return empty_pb2.Empty()

    async def Block(self, request: wrappers_pb2.DoubleValue, call: Call) -> Any:
        time.sleep(request.value)  # on purpose: the loop stands still, as under a runaway request
        return empty_pb2.Empty()

    async def PanicStream(self, request: Any, call: Call) -> AsyncIterator[Any]:
        yield empty_pb2.Empty()
        raise InjectedFault("injected stream failure")

    async def SlowPut(self, request: rpc_pb2.PutRequest, call: Call) -> Any:
        await asyncio.sleep(3.0)
        return await self.node.write(request)

    async def Unhealthy(self, request: Any, call: Call) -> Any:
        async def failing() -> CheckResult:
            return CheckResult("injected", False, "injected by the fault service")

        self.monitor.checkers.append(failing)
        await self.monitor.evaluate()
        return empty_pb2.Empty()

    def methods(self) -> list[Method]:
        shapes: list[tuple[str, type[Any], type[Any], bool]] = [
            ("Panic", empty_pb2.Empty, empty_pb2.Empty, False),
            ("Sleep", wrappers_pb2.DoubleValue, empty_pb2.Empty, False),
            ("Block", wrappers_pb2.DoubleValue, empty_pb2.Empty, False),
            ("PanicStream", empty_pb2.Empty, empty_pb2.Empty, True),
            ("SlowPut", rpc_pb2.PutRequest, rpc_pb2.PutResponse, False),
            ("Unhealthy", empty_pb2.Empty, empty_pb2.Empty, False),
        ]
        return [
            Method(method_info(SERVICE, name, False, streaming, req), getattr(self, name), req, resp)
            for name, req, resp, streaming in shapes
        ]
