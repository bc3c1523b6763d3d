"""`metastore stop|health|stats` against a real daemon: output, exit codes, effects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from prometheus_client.parser import text_string_to_metric_families
from reliability_kit import FAULTS, http_get, start_with_faults, stats
from typer.testing import CliRunner

from metastore_cli.main import app
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc

from conftest import Proc, free_port, start_metastore

ROOT = Path(__file__).resolve().parent.parent.parent


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metastore_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def cli_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run here, not in a new interpreter (that costs a second a call on a loaded CI)."""
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


def test_health_exit_codes(tmp_path: Path) -> None:
    cli = cli_in_process
    p = start_with_faults(tmp_path / "data")
    try:
        ep = f"--endpoints={p.endpoint}"
        r = cli("health", ep)
        assert r.returncode == 0, r.stderr
        assert f"{p.endpoint} is SERVING" in r.stdout
        doc = json.loads(cli("health", ep, "-w", "json").stdout)
        assert doc["status"] == "SERVING" and doc["code"] == 0
        assert "| SERVING |" in cli("health", ep, "-w", "table").stdout
        assert cli("health", ep, "--service", "etcdserverpb.KV").returncode == 0
        r = cli("health", ep, "--service", "no.such.Service")
        assert r.returncode == 4 and "unknown service" in r.stderr
        r = cli("health", "--bogus-flag")
        assert r.returncode == 2
        r = cli("health", ep, "--rpc-timeout", "0")
        assert r.returncode == 2
        r = cli("health", f"--endpoints=127.0.0.1:{free_port()}", "--connect-timeout", "0.5")
        assert r.returncode == 7 and "failed to connect" in r.stderr
        # an active alarm: the gRPC health stays SERVING (a probe must not restart the daemon),
        # but `metastore health` agrees with /health that the daemon is not healthy
        with grpc.insecure_channel(p.endpoint) as ch:
            alarm = rpc.MaintenanceStub(ch).Alarm
            alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), timeout=5)
            r = cli("health", ep)
            assert r.returncode == 5 and "active alarm(s): NOSPACE" in r.stderr
            assert http_get(p.metrics_port, "/health")[0] == 503
            assert cli("health", ep, "--exclude", "nospace").returncode == 0
            assert http_get(p.metrics_port, "/health?exclude=NOSPACE")[0] == 200
            alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, alarm=pb.NOSPACE), timeout=5)
        assert cli("health", ep).returncode == 0
        with grpc.insecure_channel(p.endpoint) as ch:
            ch.unary_unary(
                FAULTS + "Unhealthy",
                request_serializer=empty_pb2.Empty.SerializeToString,
                response_deserializer=empty_pb2.Empty.FromString,
            )(empty_pb2.Empty(), timeout=5)
        r = cli("health", ep)
        assert r.returncode == 5 and "NOT_SERVING" in r.stderr
        s = stats(p.endpoint)
        assert not s.serving and any("injected" in x for x in s.health_reasons)
    finally:
        p.stop()


def test_stop_waits_until_the_daemon_is_gone(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    r = cli("stop", f"--endpoints={p.endpoint}", "--reason", "test stop")
    assert r.returncode == 0, r.stderr
    assert f"(pid {p.pid}) stopped in" in r.stdout
    assert p.proc.wait(1) == 0  # already gone when stop returned
    assert "shutdown requested: admin: test stop" in p.output()
    q = start_metastore(p.data_dir)
    try:
        s = stats(q.endpoint)
        assert s.last_shutdown_reason == "admin: test stop"
        assert [x.phase for x in s.last_shutdown] == [
            "stop-accepting",
            "drain",
            "persist-state",
            "close-resources",
        ]
    finally:
        q.stop()


def test_stop_without_a_daemon(tmp_path: Path) -> None:
    r = cli_in_process("stop", f"--endpoints=127.0.0.1:{free_port()}", "--dial-timeout", "0.5")
    assert r.returncode == 7 and "cannot connect" in r.stderr


def test_stats_printers(shared_metastore: Proc) -> None:
    cli = cli_in_process
    ep = f"--endpoints={shared_metastore.endpoint}"
    r = cli("stats", ep)
    assert r.returncode == 0, r.stderr
    for figure in ("connections: ", "requests in flight: 0 / 5000", "panics recovered: 0", "revision: 1"):
        assert figure in r.stdout
    doc = json.loads(cli("stats", ep, "-w", "json").stdout)
    assert doc["connections_max"] == 10000 and doc["requests_max"] == 5000
    assert doc["revision"] == 1 and doc["backend"] == "leveldb" and doc["serving"] is True
    assert doc["panic_count"] == 0  # every figure, zeros too: `jq .panic_count` must not print null
    assert isinstance(doc["member_id"], int)
    r = cli("stats", ep, "-w", "table")
    assert r.returncode == 0 and "panics recovered" in r.stdout and "memory" in r.stdout
    assert cli("stats", ep, "-w", "yaml").returncode != 0


def _get_stats_calls(p: Proc) -> float:
    """How many GetStats calls the daemon has started (its /metrics)."""
    body = http_get(p.metrics_port, "/metrics")[1]
    return sum(
        s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
        if s.name == "grpc_server_started_total" and s.labels.get("grpc_method") == "GetStats"
    )


@pytest.mark.parametrize("write_out", ["table", "json"])
def test_stats_watch_refreshes_until_interrupted(shared_metastore: Proc, write_out: str) -> None:
    before = _get_stats_calls(shared_metastore)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metastore_cli",
            "stats",
            f"--endpoints={shared_metastore.endpoint}",
            "--watch",
            "-i",
            "0.2",
            "-w",
            write_out,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    # Ctrl-C once it has refreshed twice (its handler is in place by then): however loaded the
    # machine, the interrupt lands inside the refresh loop, which is what must not hang
    deadline = time.monotonic() + 60
    while _get_stats_calls(shared_metastore) < before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    if write_out == "table":
        assert "panics recovered" in out
    else:  # one JSON document per refresh, one per line, every figure in each
        docs = [json.loads(line) for line in out.splitlines()]
        assert len(docs) >= 2 and all(d["panic_count"] == 0 for d in docs)
