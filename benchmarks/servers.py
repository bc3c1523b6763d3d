"""Start and stop the servers under test: etcd, metastore and the floor, on free loopback ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from tests.support import first_range, free_port

ROOT = Path(__file__).resolve().parent.parent


def clean_env(src: Path = ROOT) -> dict[str, str]:
    """Our environment without settings that would slow a Python server or client.

    tests/conftest.py forces the pure-Python protobuf (for the etcd3 package); a server started
    from pytest would inherit it and run several times slower than in production.
    """
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    # src first (metastore from an exported revision), then this checkout (benchmarks.launch).
    paths = dict.fromkeys([str(src), str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def export_rev(rev: str, into: Path) -> str:
    """Write the tree of git revision rev into `into` (read-only on the repo); returns its short id."""
    short = subprocess.run(
        ["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", short], capture_output=True, cwd=ROOT, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return short


BENCH_AUTH = "--bench-auth"  # harness-only: turn auth on after start, load as a non-root user


def enable_auth(endpoint: str) -> str:
    """Root, and a user `bench` whose one role may read and write every key; auth on. Returns
    bench's token: every request is then checked against a grant (root would skip the check)."""
    every = apb.Permission(permType=apb.Permission.READWRITE, key=b"\0", range_end=b"\0")
    with grpc.insecure_channel(endpoint) as ch:
        auth = rpc_pb2_grpc.AuthStub(ch)
        for name in ("root", "bench"):
            auth.UserAdd(pb.AuthUserAddRequest(name=name, password="bench-pw"))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.RoleAdd(pb.AuthRoleAddRequest(name="all"))
        auth.RoleGrantPermission(pb.AuthRoleGrantPermissionRequest(name="all", perm=every))
        auth.UserGrantRole(pb.AuthUserGrantRoleRequest(user="bench", role="all"))
        auth.AuthEnable(pb.AuthEnableRequest())
        return str(auth.Authenticate(pb.AuthenticateRequest(name="bench", password="bench-pw")).token)


@dataclass
class Target:
    """One server under test; start() may be called again after stop() (restart timing)."""

    name: str
    kind: str  # etcd | metastore | floor
    workdir: Path
    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    data_dir: Path | None = None
    src: Path = ROOT  # the source tree a Python server runs from
    token: str = ""  # with --bench-auth: the load client's auth token

    @property
    def _auth(self) -> bool:
        return BENCH_AUTH in self.extra

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _args(self) -> list[str]:
        if self.kind == "etcd":
            etcd = shutil.which("etcd") or "/usr/bin/etcd"
            peer = free_port()
            return [
                etcd,
                "--data-dir",
                str(self.data_dir),
                "--name",
                "bench",
                "--listen-client-urls",
                f"http://{self.endpoint}",
                "--advertise-client-urls",
                f"http://{self.endpoint}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"bench=http://127.0.0.1:{peer}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
                "--log-level",
                "error",
                *self.extra,
            ]
        if self.kind == "metastore":
            # Launcher-only flags (benchmarks/launch.py) come first in extra.
            launch = [x for x in self.extra if x in ("--uvloop", "--stats", "--no-layers")]
            module = ["benchmarks.launch", *launch] if launch else ["metastore_cli"]
            return [
                sys.executable,
                "-m",
                *module,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                f"http://{self.endpoint}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
                "--log-level",
                "warning",
                *(x for x in self.extra if x not in launch and x != BENCH_AUTH),
            ]
        return [sys.executable, "-m", "benchmarks.floor_server", "--port", str(self.port), *self.extra]

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for the first answered Range; returns seconds from spawn to answer."""
        if not self.port:
            self.port = free_port()
        safe = self.name.replace("/", "_")
        if self.data_dir is None:
            self.data_dir = self.workdir / f"{safe}-data"
        log = self.workdir / f"{safe}.log"
        t0 = time.monotonic()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self._args(), stdout=out, stderr=subprocess.STDOUT, cwd=self.src, env=clean_env(self.src)
            )
        try:
            t1 = first_range(self.endpoint, self.proc, timeout)
        except Exception:
            self.stop(signal.SIGKILL)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} did not start; log:\n{tail}") from None
        if self._auth and not self.token:
            self.token = enable_auth(self.endpoint)
        return t1 - t0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal our process by PID and wait for it."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
