"""Test-only fault injection: a service that fails or stalls on purpose.

Registered only when BOTH the hidden `--test-faults` flag is given AND the
environment has METASTORE_TEST_FAULTS=1, so no production start-up reaches
it. Its methods go through the same layers as every real RPC, so tests see
exactly what recovery and limits do to a real handler:

    /metastore.testing.Faults/Panic        unary, raises RuntimeError
    /metastore.testing.Faults/Sleep        unary, sleeps DoubleValue seconds
    /metastore.testing.Faults/PanicStream  server stream, one message then RuntimeError
    /metastore.testing.Faults/SlowPut      unary, sleeps 3 s, then a real Put (PutRequest)
    /metastore.testing.Faults/Unhealthy    unary, adds a health checker that always fails
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import empty_pb2, wrappers_pb2

from metastore_core.pb.etcdserverpb import rpc_pb2
from metastore_core.server.health import CheckResult, HealthMonitor
from metastore_core.server.node import Node
from metastore_core.server.rpc import Behaviour, Layer, MethodInfo

SERVICE = "metastore.testing.Faults"
ENV = "METASTORE_TEST_FAULTS"


def enabled(flag: bool) -> bool:
    """The flag alone is not enough: the environment must agree."""
    return flag and os.environ.get(ENV) == "1"


class InjectedFault(RuntimeError):
    """Raised by the fault service on purpose."""


async def _panic(request: Any, context: grpc.aio.ServicerContext) -> Any:
    raise InjectedFault("injected handler failure")


async def _sleep(request: wrappers_pb2.DoubleValue, context: grpc.aio.ServicerContext) -> Any:
    await asyncio.sleep(request.value)
    return empty_pb2.Empty()


async def _panic_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    yield empty_pb2.Empty()
    raise InjectedFault("injected stream failure")


def fault_handler(layers: Sequence[Layer], node: Node, monitor: HealthMonitor) -> grpc.GenericRpcHandler:
    """The fault service, wrapped by layers like any other service."""

    async def failing() -> CheckResult:
        return CheckResult("injected", False, "injected by the fault service")

    async def unhealthy(request: Any, context: grpc.aio.ServicerContext) -> Any:
        monitor.checkers.append(failing)
        await monitor.evaluate()
        return empty_pb2.Empty()

    async def slow_put(request: rpc_pb2.PutRequest, context: grpc.aio.ServicerContext) -> Any:
        await asyncio.sleep(3.0)
        return await node.write(request)

    methods: list[tuple[str, Behaviour, type[Any], type[Any], bool]] = [
        ("Panic", _panic, empty_pb2.Empty, empty_pb2.Empty, False),
        ("Sleep", _sleep, wrappers_pb2.DoubleValue, empty_pb2.Empty, False),
        ("PanicStream", _panic_stream, empty_pb2.Empty, empty_pb2.Empty, True),
        ("SlowPut", slow_put, rpc_pb2.PutRequest, rpc_pb2.PutResponse, False),
        ("Unhealthy", unhealthy, empty_pb2.Empty, empty_pb2.Empty, False),
    ]
    handlers = {}
    for name, fn, req_cls, resp_cls, streaming in methods:
        info = MethodInfo(SERVICE, name, f"/{SERVICE}/{name}", False, streaming, req_cls)
        for layer in layers:
            fn = layer(info, fn)
        make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        handlers[name] = make(
            fn,
            request_deserializer=req_cls.FromString,
            response_serializer=resp_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
