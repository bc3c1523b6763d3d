"""kill -9 at a random moment loses no acknowledged write, and revisions stay right."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import start_metastore

WRITER = r"""
import asyncio, sys
import grpc
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb, rpc_pb2_grpc

async def worker(stub, w, n):
    for i in range(n):
        key = b"w%d/%06d" % (w, i)
        try:
            resp = await stub.Put(pb.PutRequest(key=key, value=key), timeout=5)
        except grpc.aio.AioRpcError:
            return
        print(key.decode(), resp.header.revision, flush=True)

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as ch:
        stub = rpc_pb2_grpc.KVStub(ch)
        await asyncio.gather(*(worker(stub, w, 100000) for w in range(16)))

asyncio.run(main())
"""


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random()
    data = tmp_path / "d"
    total = 0
    for cycle in range(3):
        p = start_metastore(data)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, p.endpoint], stdout=subprocess.PIPE, text=True
        )
        time.sleep(rng.uniform(0.5, 1.5))
        p.kill()  # SIGKILL, mid-stream
        out, _ = writer.communicate(timeout=30)
        acked = [line.split() for line in out.splitlines() if line.strip()]
        assert acked, "the writer got no acknowledgement before the kill"
        p2 = start_metastore(data)
        try:
            with grpc.insecure_channel(p2.endpoint) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                for key, rev in acked:
                    resp = kv.Range(pb.RangeRequest(key=key.encode()), timeout=5)
                    assert len(resp.kvs) == 1, f"cycle {cycle}: acknowledged {key} lost"
                    assert resp.kvs[0].mod_revision == int(rev), f"cycle {cycle}: {key} revision changed"
                head = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True), timeout=5)
                assert head.header.revision >= max(int(r) for _, r in acked)
                total = head.count
        finally:
            p2.stop()
    assert total > 0
