"""Resource limits as an operator sees them: refusals at once, naming the limit."""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from reliability_kit import health_check, http_get, sleep_call, start_with_faults, stats

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from conftest import start_metastore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def client(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "load_client.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def metric(port: int, name: str) -> float:
    _, body = http_get(port, "/metrics")
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 10_300, reason="needs a hard open-file limit above 10,300"
)
def test_ten_thousand_connections_held_and_the_next_refused(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    holder = client("hold", p.endpoint, "10000")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "HELD 10000"
        deadline = time.monotonic() + 20
        while metric(p.metrics_port, "metastore_connections_current") < 10000:
            assert time.monotonic() < deadline, "server never saw 10,000 connections"
            time.sleep(0.2)
        assert metric(p.metrics_port, "metastore_connections_limit") == 10000
        with grpc.insecure_channel(p.endpoint) as ch, pytest.raises(grpc.RpcError) as info:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # the held connections are still up and the daemon serves again once they go
        holder.communicate("", timeout=30)
        time.sleep(0.5)
        with grpc.insecure_channel(p.endpoint) as ch:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
    finally:
        if holder.poll() is None:
            holder.kill()
        assert p.stop() == 0


def test_five_thousand_slow_requests_accepted_and_the_next_refused_at_once(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data")
    load = client("slow", p.endpoint, "5000", "8")
    try:
        assert load.stdout is not None
        assert load.stdout.readline().strip() == "STARTED"
        deadline = time.monotonic() + 30
        while stats(p.endpoint).requests_current < 5000:
            assert time.monotonic() < deadline, f"only {stats(p.endpoint).requests_current} in flight"
            time.sleep(0.1)
        with grpc.insecure_channel(p.endpoint) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
            took = time.monotonic() - t0
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "5000 concurrent requests" in (info.value.details() or "")
            assert "--max-concurrent-requests" in (info.value.details() or "")
            assert took < 0.5, f"refusal took {took:.3f}s"
            # health and admin are not behind the limit
            assert health_check(p.endpoint) == health_pb2.HealthCheckResponse.SERVING
        s = stats(p.endpoint)
        assert s.requests_max == 5000 and s.requests_refused == 1
        out, _ = load.communicate(timeout=60)
        assert json.loads(out.strip().splitlines()[-1]) == {"codes": {"OK": 5000}}
    finally:
        if load.poll() is None:
            load.kill()
        assert p.stop() == 0


def test_silent_connection_closed_after_connection_timeout(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--connection-timeout", "1")
    try:
        host, port = p.endpoint.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(10)
            t0 = time.monotonic()
            while s.recv(4096):  # the server's own SETTINGS frame, then EOF: we sent nothing
                pass
            took = time.monotonic() - t0
        assert 0.8 < took < 3.0, took
        # a real client in the same time frame is fine
        with grpc.insecure_channel(p.endpoint) as ch:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
    finally:
        p.stop()


def test_oversize_request_and_key_value_limits(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    try:
        with grpc.insecure_channel(p.endpoint, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                kv.Put(rpc_pb2.PutRequest(key=b"big", value=b"x" * (5 << 20)), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(grpc.RpcError) as info:
                kv.Put(rpc_pb2.PutRequest(key=b"k" * 1537, value=b"v"), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1536" in (info.value.details() or "")
            with pytest.raises(grpc.RpcError) as info:
                kv.Put(rpc_pb2.PutRequest(key=b"v", value=b"x" * ((1 << 20) + 1)), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1048576" in (info.value.details() or "")
            assert kv.Range(rpc_pb2.RangeRequest(key=b"\0", range_end=b"\0"), timeout=5).count == 0
    finally:
        p.stop()


def test_request_timeout_and_shorter_client_deadline(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--request-timeout", "0.5")
    try:
        with grpc.insecure_channel(p.endpoint) as ch:
            from google.protobuf import wrappers_pb2

            call = sleep_call(ch)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                call(wrappers_pb2.DoubleValue(value=3), timeout=10)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert info.value.details() == "etcdserver: request timed out"
            assert 0.4 < time.monotonic() - t0 < 1.5
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                call(wrappers_pb2.DoubleValue(value=3), timeout=0.2)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.monotonic() - t0 < 0.45
            call(wrappers_pb2.DoubleValue(value=0.1), timeout=5)
        assert stats(p.endpoint).requests_current == 0
    finally:
        p.stop()


def test_open_streams_never_block_unary_calls(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--max-concurrent-requests", "5")
    watchers = client("watch", p.endpoint, "50")
    try:
        assert watchers.stdout is not None
        assert watchers.stdout.readline().strip() == "OPEN 50"
        with grpc.insecure_channel(p.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in range(20):
                kv.Put(rpc_pb2.PutRequest(key=b"k%d" % i, value=b"v"), timeout=5)
        assert health_check(p.endpoint) == health_pb2.HealthCheckResponse.SERVING
        s = stats(p.endpoint)
        assert s.active_streams >= 50 and s.watch_streams == 50
    finally:
        assert p.stop() == 0
        out, _ = watchers.communicate("", timeout=30)
        assert json.loads(out.strip().splitlines()[-1])["ended"] == 50


def test_memory_cap_refuses_writes_keeps_reads(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--max-memory", str(8 << 20), "--memory-check-interval", "0.1")
    try:
        with grpc.insecure_channel(p.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            deadline = time.monotonic() + 5
            while True:
                try:
                    kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "--max-memory" in (exc.details() or "")
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)
            kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5)
            kv.DeleteRange(rpc_pb2.DeleteRangeRequest(key=b"k"), timeout=5)
        s = stats(p.endpoint)
        assert s.memory_max_bytes == 8 << 20 and s.memory_used_bytes > s.memory_max_bytes
        assert metric(p.metrics_port, "metastore_memory_limit_bytes") == 8 << 20
    finally:
        p.stop()


def test_presets(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--preset", "safe", "--max-concurrent-requests", "1234")
    try:
        s = stats(p.endpoint)
        assert s.connections_max == 5000
        assert s.requests_max == 1234  # an explicit flag wins over the preset
        assert s.memory_max_bytes == 1 << 30
    finally:
        p.stop()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "metastore_cli",
            "serve",
            "--preset",
            "turbo",
            "--data-dir",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode != 0 and "turbo" in bad.stderr
