"""Opt-in OpenTelemetry tracing, exported to an in-memory exporter: a span per RPC and per batch
commit, the caller's traceparent honoured, etcd's sampling; off, nothing is loaded."""

from __future__ import annotations

import subprocess
import sys

import grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.server.app import Server
from metastore_core.server.tracing import Tracing

from conftest import ROOT, free_port

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"  # a caller that sampled its trace


def _config(rate: int) -> Config:
    return Config(
        backend="memory",
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        experimental_enable_distributed_tracing=True,
        experimental_distributed_tracing_sampling_rate=rate,
        experimental_distributed_tracing_instance_id="m1",
    )


async def _traced_server(rate: int) -> tuple[Server, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    config = _config(rate)
    server = Server(config, tracing=Tracing.from_config(config, exporter))
    await server.start()
    return server, exporter


async def test_every_rpc_and_commit_is_a_span() -> None:
    server, exporter = await _traced_server(1_000_000)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            kv = rpc.KVStub(ch)
            await kv.Put(pb.PutRequest(key=b"a", value=b"1"))
            await kv.Range(pb.RangeRequest(key=b"a"), metadata=(("traceparent", TRACEPARENT),))
            try:
                await kv.Range(pb.RangeRequest(key=b""))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await server.stop()
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    put = by_name["etcdserverpb.KV/Put"][0]
    assert put.kind == SpanKind.SERVER and put.attributes["rpc.method"] == "Put"
    assert put.attributes["rpc.grpc.status_code"] == 0
    assert put.resource.attributes["service.name"] == "metastore"
    assert put.resource.attributes["service.instance.id"] == "m1"
    ok, refused = by_name["etcdserverpb.KV/Range"]
    assert ok.context.trace_id == TRACE_ID and ok.parent is not None and ok.parent.span_id == PARENT_ID
    assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status.status_code == StatusCode.ERROR
    commits = by_name["backend commit"]
    assert commits and all(c.attributes["entries"] > 0 and c.end_time >= c.start_time for c in commits)


async def test_sampling_rate_zero_traces_only_what_a_caller_sampled() -> None:
    server, exporter = await _traced_server(0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            kv = rpc.KVStub(ch)
            await kv.Range(pb.RangeRequest(key=b"a"))
            await kv.Range(pb.RangeRequest(key=b"b"), metadata=(("traceparent", TRACEPARENT),))
    finally:
        await server.stop()
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == TRACE_ID


def test_off_loads_nothing_and_adds_no_layer() -> None:
    config = Config(backend="memory")
    assert Tracing.from_config(config) is None
    assert len(Server(config).layers) == 4  # recovery, limits, auth, per-client limits
    code = "import sys, metastore_core.server.app; print(any('opentelemetry' in m for m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert r.stdout.strip() == "False"
