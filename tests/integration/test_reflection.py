"""gRPC server reflection: on by default so grpcurl can list and describe; --no-grpc-reflection
turns it off."""

from __future__ import annotations

import asyncio

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from metastore_core.config import Config
from metastore_core.server.app import Server

from conftest import free_port


def _config(reflection: bool) -> Config:
    return Config(
        backend="memory",
        grpc_reflection=reflection,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


def _describe(endpoint: str) -> tuple[set[str], list[str]]:
    """What grpcurl list and describe read: service names, and KV's methods (a blocking client)."""
    with grpc.insecure_channel(endpoint) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        kv = db.FindFileContainingSymbol("etcdserverpb.KV")
        return set(db.get_services()), [m.name for s in kv.service if s.name == "KV" for m in s.method]


async def test_reflection_lists_and_describes_the_services() -> None:
    server = Server(_config(True))
    await server.start()
    try:
        services, methods = await asyncio.to_thread(_describe, f"127.0.0.1:{server.ports[0]}")
        assert {
            "etcdserverpb.KV",
            "etcdserverpb.Watch",
            "etcdserverpb.Maintenance",
            "v3lockpb.Lock",
            "grpc.health.v1.Health",
            "metastore.admin.v1.Admin",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        assert not any("testing" in s for s in services)
        assert "Range" in methods and "Txn" in methods
    finally:
        await server.stop()


def _list_code(endpoint: str) -> grpc.StatusCode:
    with grpc.insecure_channel(endpoint) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_no_grpc_reflection_turns_it_off() -> None:
    server = Server(_config(False))
    await server.start()
    try:
        code = await asyncio.to_thread(_list_code, f"127.0.0.1:{server.ports[0]}")
        assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop()
