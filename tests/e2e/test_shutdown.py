"""Graceful shutdown as an operator sees it: SIGTERM, second signal, timeout, streams."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability_kit import FAULTS, sleep_call, start_with_faults, stats

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from metastore_core.pb.metastore.admin.v1 import admin_pb2, admin_pb2_grpc

from conftest import start_metastore

HERE = Path(__file__).resolve().parent
PHASES = ["stop-accepting", "drain", "persist-state", "close-resources"]


def wait_in_flight(endpoint: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(endpoint) as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        while admin.GetStats(admin_pb2.GetStatsRequest(), timeout=5).requests_current < n:
            assert time.monotonic() < deadline, f"never {n} requests in flight"
            time.sleep(0.02)


def test_sigterm_finishes_200_in_flight_writes_and_they_survive_restart(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data")
    with grpc.insecure_channel(p.endpoint) as ch:
        slow_put = ch.unary_unary(
            FAULTS + "SlowPut",
            request_serializer=rpc_pb2.PutRequest.SerializeToString,
            response_deserializer=rpc_pb2.PutResponse.FromString,
        )
        futures = [
            slow_put.future(rpc_pb2.PutRequest(key=b"inflight/%03d" % i, value=b"v%d" % i), timeout=30)
            for i in range(200)
        ]
        wait_in_flight(p.endpoint, 200)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        revisions = sorted(f.result().header.revision for f in futures)  # every one completes OK
        assert p.proc.wait(15) == 0
        took = time.monotonic() - t0
    assert revisions == list(range(2, 202))
    assert took < 10  # the 3 s calls finish, then a quick shutdown (slack for a loaded machine)
    out = p.output()
    for phase in PHASES:
        assert re.search(rf"shutdown phase {phase} took \d+\.\d+s", out), phase
    q = start_metastore(p.data_dir)
    try:
        with grpc.insecure_channel(q.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            resp = kv.Range(rpc_pb2.RangeRequest(key=b"inflight/", range_end=b"inflight0"), timeout=5)
            assert {kv.key: kv.value for kv in resp.kvs} == {
                b"inflight/%03d" % i: b"v%d" % i for i in range(200)
            }
        last = stats(q.endpoint).last_shutdown
        assert [ph.phase for ph in last] == PHASES
        assert all(ph.seconds >= 0 and not ph.error for ph in last)
    finally:
        assert q.stop() == 0


def test_shutdown_with_1000_open_watch_streams_within_grace(tmp_path: Path) -> None:
    grace = 5.0
    p = start_metastore(tmp_path / "data", "--shutdown-timeout", str(grace))
    watchers = subprocess.Popen(
        [sys.executable, str(HERE / "load_client.py"), "watch", p.endpoint, "1000"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watchers.stdout is not None
        assert watchers.stdout.readline().strip() == "OPEN 1000"
        assert stats(p.endpoint).watch_streams == 1000
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        assert p.proc.wait(grace + 1) == 0
        took = time.monotonic() - t0
        assert took < grace + 1, took
        out, _ = watchers.communicate("", timeout=30)
        result = json.loads(out.strip().splitlines()[-1])
        # every stream was ended by the server at shutdown (the Watch service ends them with
        # UNAVAILABLE, as a stopping etcd does, so clients resume elsewhere)
        assert result["ended"] == 1000
        assert set(result["codes"]) <= {"OK", "UNAVAILABLE"}, result
    finally:
        if watchers.poll() is None:
            watchers.kill()
        p.stop()


def test_not_serving_pushed_within_100ms_of_sigterm(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    got: queue.Queue[tuple[float, int]] = queue.Queue()
    ended: list[grpc.StatusCode] = []
    with grpc.insecure_channel(p.endpoint) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)

        def read() -> None:
            try:
                for msg in stream:
                    got.put((time.monotonic(), msg.status))
                ended.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                ended.append(exc.code())

        t = threading.Thread(target=read)
        t.start()
        assert got.get(timeout=5)[1] == health_pb2.HealthCheckResponse.SERVING
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        when, status = got.get(timeout=5)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert when - t0 < 0.1, f"NOT_SERVING after {when - t0:.3f}s"
        t.join(10)
        assert ended == [grpc.StatusCode.OK]  # the server ended the health stream cleanly
    assert p.proc.wait(10) == 0


def test_second_signal_forces_exit_within_one_second(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--shutdown-timeout", "60")
    with grpc.insecure_channel(p.endpoint) as ch:
        fut = sleep_call(ch).future(wrappers_pb2.DoubleValue(value=30), timeout=60)
        wait_in_flight(p.endpoint, 1)
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert p.proc.poll() is None  # still draining the 30 s call
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        code = p.proc.wait(5)
        assert time.monotonic() - t0 < 1.0
        assert code == 130
        fut.cancel()
    assert "second signal" in p.output()


def put_acked(ch: grpc.Channel, n: int) -> None:
    kv = rpc_pb2_grpc.KVStub(ch)
    for i in range(n):
        kv.Put(rpc_pb2.PutRequest(key=b"acked/%02d" % i, value=b"x"), timeout=5)


def acked_after_restart(data_dir: Path) -> int:
    """How many of put_acked's keys a restarted daemon on data_dir holds."""
    q = start_metastore(data_dir)
    try:
        with grpc.insecure_channel(q.endpoint) as ch:
            resp = rpc_pb2_grpc.KVStub(ch).Range(
                rpc_pb2.RangeRequest(key=b"acked/", range_end=b"acked0", count_only=True), timeout=5
            )
        return int(resp.count)
    finally:
        q.stop()


def test_timeout_forces_the_rest_and_loses_no_acknowledged_write(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--shutdown-timeout", "1.5")
    with grpc.insecure_channel(p.endpoint) as ch:
        put_acked(ch, 50)
        fut = sleep_call(ch).future(wrappers_pb2.DoubleValue(value=30), timeout=60)
        wait_in_flight(p.endpoint, 1)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        code = p.proc.wait(10)
        took = time.monotonic() - t0
        fut.cancel()
    assert code == 1  # not a clean shutdown
    assert took < 1.5 + 1  # the timeout holds, counted from the signal
    assert "timed out" in p.output()
    q = start_metastore(p.data_dir)
    try:
        with grpc.insecure_channel(q.endpoint) as ch:
            resp = rpc_pb2_grpc.KVStub(ch).Range(
                rpc_pb2.RangeRequest(key=b"acked/", range_end=b"acked0", count_only=True), timeout=5
            )
            assert resp.count == 50
        last = stats(q.endpoint).last_shutdown
        assert any("timed out" in ph.error for ph in last)
    finally:
        q.stop()


def test_new_rpcs_refused_while_draining(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--shutdown-timeout", "10")
    with grpc.insecure_channel(p.endpoint) as ch:
        fut = sleep_call(ch).future(wrappers_pb2.DoubleValue(value=1.5), timeout=30)
        wait_in_flight(p.endpoint, 1)
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(0.3)
        try:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"a"), timeout=3)
            raise AssertionError("a new RPC was accepted during shutdown")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        fut.result()  # the in-flight one finishes
    assert p.proc.wait(10) == 0


def block_call(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    """The fault service's Block: the daemon's event loop stands still for DoubleValue seconds."""
    return ch.unary_unary(
        FAULTS + "Block",
        request_serializer=wrappers_pb2.DoubleValue.SerializeToString,
        response_deserializer=lambda b: b,
    )


def test_requests_queued_at_sigterm_get_unavailable_never_cancelled(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--shutdown-timeout", "10")
    with grpc.insecure_channel(p.endpoint) as ch:
        blocked = block_call(ch).future(wrappers_pb2.DoubleValue(value=1.5), timeout=30)
        time.sleep(0.3)  # the loop stands still: the puts below queue in grpc-core
        kv = rpc_pb2_grpc.KVStub(ch)
        futures = [
            kv.Put.future(rpc_pb2.PutRequest(key=b"q%d" % i, value=b"v"), timeout=30) for i in range(64)
        ]
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGTERM)
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
        blocked.result()  # the request that was running is answered
    assert p.proc.wait(10) == 0
    # UNAVAILABLE is retryable: clientv3 fails over; CANCELLED would be an error to the caller
    assert set(codes) <= {"OK", "UNAVAILABLE"} and len(codes) == 64, codes
    out = p.output()
    # the log tells when the signal came, not when the busy loop got to it
    delay = float(re.search(r"shutdown requested: signal SIGTERM \((\d+\.\d+)s after it arrived", out)[1])
    took = float(re.search(r"shutdown finished in (\d+\.\d+)s of 10s", out)[1])
    assert delay > 0.5 and took >= delay


def test_sigterm_during_a_request_that_blocks_the_loop_holds_the_timeout(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data", "--shutdown-timeout", "2")
    with grpc.insecure_channel(p.endpoint) as ch:
        put_acked(ch, 20)
        fut = block_call(ch).future(wrappers_pb2.DoubleValue(value=15), timeout=60)
        time.sleep(0.3)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        code = p.proc.wait(10)
        took = time.monotonic() - t0
        fut.cancel()
    assert code == 1 and 1.9 < took < 3.0, (code, took)
    assert re.search(
        r"shutdown still running 2\.\d+s after it was asked for \(--shutdown-timeout 2s\)", p.output()
    )
    assert acked_after_restart(p.data_dir) == 20  # forced, yet nothing acknowledged is lost


def test_a_forged_shutdown_reason_stays_on_one_log_line(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    forged = "maintenance\n2026-01-01 00:00:00,000 INFO metastore: stopped\x1b[2J"
    with grpc.insecure_channel(p.endpoint) as ch:
        admin_pb2_grpc.AdminStub(ch).Shutdown(admin_pb2.ShutdownRequest(reason=forged), timeout=5)
    assert p.proc.wait(10) == 0
    lines = p.output().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert "\x1b" not in p.output()
    escaped = "admin: maintenance\\n2026-01-01 00:00:00,000 INFO metastore: stopped\\x1b[2J"
    # the message and its reason= field, both escaped, on the one line
    assert any(line.endswith(f"shutdown requested: {escaped} reason={escaped}") for line in lines)
