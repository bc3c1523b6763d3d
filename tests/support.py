"""Helpers shared by the tests and the benchmarks (benchmarks import these; tests import nothing
from benchmarks/): a free loopback port, and the start-up probe that waits for a first answer."""

from __future__ import annotations

import random
import socket
import subprocess
import time

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

# Below Linux's ephemeral range (32768-60999 by default): a port the kernel hands out for bind(0)
# is also one it hands to outgoing connections, so a server given such a port could find it taken
# by a client's socket a moment later (seen once in CI: "address already in use").
_PORTS = range(20_000, 32_768)
_given: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before in this process."""
    for _ in range(1000):
        port = random.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free loopback port in 20000-32767")


def first_range(endpoint: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Poll a Range until it answers; returns the monotonic time it did.

    The channel retries its connection every 10 ms: with grpc's default reconnect backoff
    (1 s, growing) a server that opens its port late would be measured a second slow."""
    deadline = time.monotonic() + timeout
    fast_retry = [
        ("grpc.initial_reconnect_backoff_ms", 10),
        ("grpc.min_reconnect_backoff_ms", 10),
        ("grpc.max_reconnect_backoff_ms", 10),
    ]
    with grpc.insecure_channel(endpoint, options=fast_retry) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                stub.Range(rpc_pb2.RangeRequest(key=b"\0"), timeout=0.5)
                return time.monotonic()
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return time.monotonic()
            time.sleep(0.005)
    raise RuntimeError(f"server on {endpoint} not ready after {timeout}s")
