"""Health on both ports, exactly as probes and load balancers use it."""

from __future__ import annotations

import json
import queue
import re
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_kit import http_get

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from conftest import Proc, etcdctl, start_metastore

SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def test_check_list_and_unknown_service(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        assert h.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING
        assert h.Check(health_pb2.HealthCheckRequest(service="etcdserverpb.KV"), timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as info:
            h.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        listed = h.List(health_pb2.HealthListRequest(), timeout=5).statuses
        assert {"", "etcdserverpb.KV", "etcdserverpb.Watch", "metastore.admin.v1.Admin"} <= set(listed)
        assert all(s.status == SERVING for s in listed.values())


def test_watch_unknown_service_stays_open(metastore: Proc) -> None:
    got: queue.Queue[int] = queue.Queue()
    with grpc.insecure_channel(metastore.endpoint) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="nope"), timeout=30
        )

        def read() -> None:
            try:
                for msg in stream:
                    got.put(msg.status)
            except grpc.RpcError:
                got.put(-1)

        threading.Thread(target=read, daemon=True).start()
        assert got.get(timeout=5) == SERVICE_UNKNOWN
        with pytest.raises(queue.Empty):
            got.get(timeout=0.5)  # no end, no further message
        assert stream.is_active()
        stream.cancel()


@pytest.mark.peer
def test_etcdctl_endpoint_health(metastore: Proc) -> None:
    r = etcdctl(metastore.endpoint, "endpoint", "health")
    assert r.returncode == 0, r.stderr
    assert "is healthy" in r.stdout + r.stderr


def _alarm(endpoint: str, action: int, alarm: int) -> None:
    with grpc.insecure_channel(endpoint) as ch:
        rpc_pb2_grpc.MaintenanceStub(ch).Alarm(
            rpc_pb2.AlarmRequest(action=action, memberID=0, alarm=alarm),
            timeout=5,  # type: ignore[arg-type]
        )


def test_http_health_follows_alarms_like_etcd(metastore: Proc) -> None:
    port = metastore.metrics_port
    status, body = http_get(port, "/health")
    assert status == 200 and json.loads(body)["health"] == "true"
    _alarm(metastore.endpoint, rpc_pb2.AlarmRequest.ACTIVATE, rpc_pb2.NOSPACE)
    status, body = http_get(port, "/health")
    assert status == 503
    doc = json.loads(body)
    assert doc["health"] == "false" and "NOSPACE" in doc["reason"]
    assert http_get(port, "/health?exclude=NOSPACE")[0] == 200
    _alarm(metastore.endpoint, rpc_pb2.AlarmRequest.DEACTIVATE, rpc_pb2.NOSPACE)
    assert http_get(port, "/health")[0] == 200
    assert http_get(port, "/readyz") == (200, "ok\n")
    assert http_get(port, "/health", method="POST")[0] == 405
    assert http_get(port, "/nope")[0] == 404


def test_metrics_exposition(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(rpc_pb2.PutRequest(key=b"a", value=b"1"), timeout=5)
        with pytest.raises(grpc.RpcError):
            kv.Range(rpc_pb2.RangeRequest(key=b""), timeout=5)
    status, body = http_get(metastore.metrics_port, "/metrics")
    assert status == 200
    for name in (
        "metastore_panic_total",
        "metastore_memory_usage_bytes",
        "metastore_memory_limit_bytes",
        "metastore_connections_current",
        "metastore_connections_limit",
        "process_resident_memory_bytes",
        "etcd_server_has_leader",
        "etcd_mvcc_db_total_size_in_bytes",
    ):
        assert re.search(rf"^{name} ", body, re.M), name
    base = 'grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{base}}} 1.0' in body
    assert 'grpc_code="InvalidArgument",grpc_method="Range"' in body
    assert 'grpc_type="bidi_stream"' in body  # Watch, pre-created with zero counts
    assert 'grpc_code="ResourceExhausted"' in body  # every code pre-created
    assert "_created" not in body
    assert "UNARY" not in body and "FAILED_PRECONDITION" not in body


def test_health_without_credentials_and_not_behind_limits(tmp_path: Path) -> None:
    # health is registered outside the RPC layers: no limit, no auth applies to it
    p = start_metastore(tmp_path / "data", "--max-concurrent-requests", "1")
    try:
        with grpc.insecure_channel(p.endpoint) as ch:
            h = health_pb2_grpc.HealthStub(ch)
            futures = [h.Check.future(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(50)]
            assert all(f.result().status == SERVING for f in futures)
    finally:
        p.stop()
