"""Shared fixtures: real server processes on free 127.0.0.1 ports, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from tests.support import first_range, free_port

ROOT = Path(__file__).resolve().parent.parent


# One start-up probe for tests and benchmarks: a Range that answers with anything but UNAVAILABLE.
wait_ready = first_range

# Every server a test started: one a failed test left running is killed when the session ends.
_started: list[subprocess.Popen[bytes]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class Proc:
    """A server process we started: its endpoint, data dir and log."""

    endpoint: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)
    metrics_port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process by PID and wait; returns its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_metastore(data_dir: Path, *extra: str, port: int | None = None, ready: bool = True) -> Proc:
    """Start `metastore serve` as a subprocess on a free port."""
    port = port or free_port()
    metrics = free_port()
    endpoint = f"127.0.0.1:{port}"
    log = data_dir.parent / f"{data_dir.name}-{port}.log"
    args = [
        sys.executable,
        "-m",
        "metastore_cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        f"http://{endpoint}",
        "--listen-metrics-urls",
        f"http://127.0.0.1:{metrics}",
        *extra,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    _started.append(proc)
    p = Proc(endpoint, data_dir, proc, log, args, metrics)
    if ready:
        try:
            wait_ready(endpoint, proc)
        except Exception:
            p.kill()
            raise RuntimeError(f"metastore did not start:\n{p.output()}") from None
    return p


def start_etcd(data_dir: Path, peer: int | None = None) -> Proc:
    """Start a real etcd (Debian etcd-server) on free loopback ports (peer: the one a restore named)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.fail("etcd is not installed: .ci/run installs Debian etcd-server")
    port, peer = free_port(), peer or free_port()
    endpoint = f"127.0.0.1:{port}"
    log = data_dir.parent / f"etcd-{port}.log"
    args = [
        etcd,
        "--data-dir",
        str(data_dir),
        "--name",
        "ref",
        "--listen-client-urls",
        f"http://{endpoint}",
        "--advertise-client-urls",
        f"http://{endpoint}",
        "--listen-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
        "--initial-cluster",
        f"ref=http://127.0.0.1:{peer}",
        "--log-level",
        "error",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    _started.append(proc)
    p = Proc(endpoint, data_dir, proc, log, args)
    try:
        wait_ready(endpoint, proc)
    except Exception:
        p.kill()
        raise
    return p


def etcdctl(
    endpoint: str, *args: str, input: str | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run etcdctl (API v3) against endpoint; never raises on a non-zero exit."""
    exe = shutil.which("etcdctl")
    if exe is None:
        pytest.fail("etcdctl is not installed: .ci/run installs Debian etcd-client")
    env = dict(os.environ, ETCDCTL_API="3")
    return subprocess.run(
        [exe, f"--endpoints={endpoint}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_client(code: str, endpoint: str, timeout: float = 60) -> str:
    """Run Python client code in its own process; `ENDPOINT` is bound to endpoint.

    The etcd client libraries (aetcd, etcd3) register etcd's proto names in
    protobuf's default pool, as our generated code does, so they cannot share
    a process with metastore_core. Fails the test with the client's stderr.
    """
    prelude = f"ENDPOINT = {endpoint!r}\nHOST, PORT = ENDPOINT.rsplit(':', 1)\nPORT = int(PORT)\n"
    r = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python"),
    )
    if r.returncode != 0:
        pytest.fail(f"client failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


@pytest.fixture
def metastore(tmp_path: Path) -> Iterator[Proc]:
    """A fresh `metastore serve` on LevelDB in a temp data dir."""
    p = start_metastore(tmp_path / "data")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def shared_metastore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One `metastore serve` for a whole test module (for tests that leave no state behind)."""
    p = start_metastore(tmp_path_factory.mktemp("shared") / "data")
    yield p
    p.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Proc]:
    """A fresh real etcd for comparison."""
    p = start_etcd(tmp_path / "etcd-data")
    yield p
    p.stop()


@pytest.fixture
def kv(metastore: Proc) -> Iterator[rpc_pb2_grpc.KVStub]:
    """A KV stub on the fresh metastore."""
    with grpc.insecure_channel(metastore.endpoint) as ch:
        yield rpc_pb2_grpc.KVStub(ch)
