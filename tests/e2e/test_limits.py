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

from conftest import free_port, start_metastore

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
        refused = refused_for_connections(p.endpoint)
        assert "limit of 10000 client connections" in refused and "--max-connections" in refused
        # health checks ride the reserve beyond the limit
        assert health_check(p.endpoint) == health_pb2.HealthCheckResponse.SERVING
        # the held connections are still up and the daemon serves again once they go
        holder.communicate("", timeout=30)
        time.sleep(0.5)
        with grpc.insecure_channel(p.endpoint) as ch:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
    finally:
        if holder.poll() is None:
            holder.kill()
        assert p.stop() == 0


OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # not a connection another channel opened


def refused_for_connections(endpoint: str, within: float = 5.0) -> str:
    """A Range on a new connection, retried until it is refused for --max-connections."""
    deadline = time.monotonic() + within
    while True:
        with grpc.insecure_channel(endpoint, options=OWN_CONNECTION) as ch:
            try:
                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    return exc.details() or ""
                raise
        assert time.monotonic() < deadline, "a connection past the limit was served"
        time.sleep(0.1)  # the daemon counts connections every 0.25-1 s


def served_again(endpoint: str, within: float = 5.0) -> None:
    """A Range on a new connection, retried until the daemon has room for it again."""
    deadline = time.monotonic() + within
    while True:
        try:
            with grpc.insecure_channel(endpoint, options=OWN_CONNECTION) as ch:
                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)
            return
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the daemon never served a new connection again"
            time.sleep(0.2)


def test_connections_past_the_limit_refused_naming_it_and_health_keeps_the_reserve(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--max-connections", "20")
    with grpc.insecure_channel(p.endpoint) as early:
        kv = rpc_pb2_grpc.KVStub(early)
        kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)  # admitted while there was room
        holder = client("hold", p.endpoint, "20")
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD 20"
            refused = refused_for_connections(p.endpoint)
            assert "limit of 20 client connections reached (--max-connections)" in refused
            kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)  # a connection admitted earlier goes on
            assert health_check(p.endpoint) == health_pb2.HealthCheckResponse.SERVING
            s = stats(p.endpoint)
            assert s.connections_refused >= 1
            assert metric(p.metrics_port, "metastore_connections_refused_total") >= 1
        finally:
            holder.communicate("", timeout=30)
        served_again(p.endpoint)  # the held ones are gone
    assert p.stop() == 0


def test_an_idle_socket_flood_leaves_health_and_admin_answering(tmp_path: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    p = start_metastore(
        tmp_path / "data", "--max-connections", "20", "--listen-admin-urls", f"http://{admin}"
    )
    flood = client("flood", p.endpoint, "200")  # far past 20 + the reserve, re-opened as closed
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "FLOODING"
        time.sleep(1.5)
        answered = []
        for _ in range(15):
            answered.append(health_check(admin) == health_pb2.HealthCheckResponse.SERVING)
            time.sleep(0.1)
        s = stats(admin)  # metastore stats reaches the daemon too
    finally:
        out, _ = flood.communicate("", timeout=30)
    assert all(answered), answered
    # sockets that never sent the HTTP/2 preface were closed after ~1 s, not --connection-timeout
    assert s.connections_closed_idle > 0
    assert json.loads(out.strip().splitlines()[-1])["closed_by_server"] > 0
    assert metric(p.metrics_port, "metastore_connections_closed_idle_total") > 0
    served_again(p.endpoint)  # the flood is over: the client port serves
    assert p.stop() == 0


def test_per_client_cap_one_greedy_client_cannot_starve_another(tmp_path: Path) -> None:
    port = free_port()
    urls = f"http://127.0.0.1:{port},http://[::1]:{port}"  # two hosts: 127.0.0.1 and ::1
    p = start_with_faults(
        tmp_path / "data", "--listen-client-urls", urls, "--max-client-requests", "100", port=port
    )
    greedy = client("slow", p.endpoint, "300", "3")  # 300 calls of 3 s from 127.0.0.1
    try:
        assert greedy.stdout is not None and greedy.stdout.readline().strip() == "STARTED"
        deadline = time.monotonic() + 20
        while stats(p.endpoint).requests_current < 100:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with grpc.insecure_channel(f"[::1]:{port}") as ch:  # the other client: every read served
            kv = rpc_pb2_grpc.KVStub(ch)
            for _ in range(50):
                kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
        s = stats(p.endpoint)
        out, _ = greedy.communicate(timeout=60)
    finally:
        if greedy.poll() is None:
            greedy.kill()
    assert json.loads(out.strip().splitlines()[-1]) == {"codes": {"OK": 100, "RESOURCE_EXHAUSTED": 200}}
    assert s.client_requests_max == 100 and s.client_refused_in_flight == 200
    top = s.busiest_clients[0]
    assert top.client == "ipv4:127.0.0.1" and top.in_flight == 100 and top.refused == 200
    assert metric(p.metrics_port, "metastore_client_refused_in_flight_total") == 200
    assert p.stop() == 0


def test_per_client_rate_limit(tmp_path: Path) -> None:
    port = free_port()
    urls = f"http://127.0.0.1:{port},http://[::1]:{port}"
    p = start_metastore(
        tmp_path / "data",
        "--listen-client-urls",
        urls,
        "--client-rate",
        "50",
        "--client-burst",
        "50",
        port=port,
    )
    try:
        codes: dict[str, int] = {}
        with grpc.insecure_channel(p.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            t0 = time.monotonic()
            for _ in range(400):
                try:
                    kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    assert "--client-rate" in (exc.details() or "")
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            took = time.monotonic() - t0
        assert codes["RESOURCE_EXHAUSTED"] > 0
        assert 50 <= codes["OK"] <= 50 + 50 * took + 5  # the burst, then 50 a second
        with grpc.insecure_channel(f"[::1]:{port}") as ch:  # another client's bucket is full
            kv = rpc_pb2_grpc.KVStub(ch)
            for _ in range(30):
                kv.Range(rpc_pb2.RangeRequest(key=b"a"), timeout=5)
        assert stats(p.endpoint).client_refused_rate == codes["RESOURCE_EXHAUSTED"]
    finally:
        p.stop()


def test_five_thousand_slow_requests_accepted_and_the_next_refused_at_once(tmp_path: Path) -> None:
    # one client takes all 5,000 here: no per-client cap (by default it would get half)
    p = start_with_faults(tmp_path / "data", "--max-client-requests", "0")
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
