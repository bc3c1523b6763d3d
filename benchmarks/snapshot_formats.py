"""What a Snapshot stream costs by format on a large store (issue 17): ours vs etcd's (bbolt).

    python -m benchmarks.snapshot_formats [--records 1000000] [--value-bytes 1000] [--repeats 3]
                                          [--data-dir DIR] [--out FILE.json]

1. Builds a LevelDB data dir of N revision records (N keys, one put each, values incompressible)
   straight through the storage layer, unless --data-dir already holds one.
2. Runs, for each format in turn (alternating, `--repeats` times), a fresh process that does what
   Maintenance.snapshot does on its worker thread: plan over a point-in-time view, encode into
   32 KiB blobs, SHA-256 of them. It reports wall and CPU seconds and bytes.
3. Once more per format under tracemalloc (slower, so not timed): the peak of Python's heap. (RSS
   says little here: LevelDB maps its table files, so reading 1 GiB adds ~1 GiB of page cache to
   the process's RSS whatever the format.)
4. With --wire: two `metastore serve` (one per format, the second on a copy of the data dir),
   and Maintenance/Snapshot streamed from each in turn by a gRPC client that only hashes the
   blobs: wall seconds and the server's CPU seconds (from /proc) per snapshot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import grpc

from benchmarks.procfs import cpu_seconds
from benchmarks.servers import Target
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import etcdsnap, snapshot
from metastore_core.storage import layout as L
from metastore_core.storage.datadir import DataDir
from metastore_core.storage.etcdlayout import Member
from metastore_core.storage.leveldb import LevelDBStorage

CHUNK = 32 * 1024
FORMATS = ("metastore", "etcd")


def build(data_dir: Path, records: int, value_bytes: int) -> None:
    dd = DataDir(data_dir)
    dd.acquire()
    storage = LevelDBStorage(dd.db_path)
    noise = os.urandom(1 << 20)
    batch: list[tuple[bytes, bytes | None]] = [
        (L.META_FORMAT, L.FORMAT_VERSION),
        (L.META_CRC, L.CRC_NONE),
        (L.META_CLUSTER_ID, L.u64(1)),
        (L.META_MEMBER_ID, L.u64(1)),
    ]
    for i in range(records):
        rev = i + 2
        at = (i * 7919) % (len(noise) - value_bytes)
        kv = KeyValue(
            key=b"key/%09d" % i,
            create_revision=rev,
            mod_revision=rev,
            version=1,
            value=noise[at : at + value_bytes],
        )
        batch.append((L.rev_key(rev, 0), kv.SerializeToString()))
        if len(batch) >= 10_000:
            storage.write(batch, sync=False)
            batch = []
    batch.append((L.META_CONSISTENT_INDEX, L.u64(records)))
    storage.write(batch, sync=True)
    storage.close()
    dd.release()


def one(data_dir: Path, fmt: str, heap: bool = False) -> dict[str, float]:
    """One snapshot in this process: what Maintenance's worker does, timed (or its heap traced)."""
    storage = LevelDBStorage(DataDir(data_dir).db_path)
    if heap:
        tracemalloc.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    view = storage.view()
    digest = hashlib.sha256()
    size = 0
    if fmt == "metastore":
        p = snapshot.plan(view)
        planned = time.perf_counter() - wall0
        blobs = snapshot.encode(view, p, CHUNK)
    else:
        ep = etcdsnap.plan(view, [Member(1, "default", ["http://localhost:2380"], [])])
        planned = time.perf_counter() - wall0
        blobs = etcdsnap.encode(ep, CHUNK)
    for blob in blobs:
        digest.update(blob)
        size += len(blob)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    view.close()
    storage.close()
    if heap:
        return {"heap_peak_mib": tracemalloc.get_traced_memory()[1] / 2**20}
    return {"wall_s": wall, "plan_s": planned, "cpu_s": cpu, "bytes": size + 32}


def _run(data_dir: Path, fmt: str, *extra: str) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.snapshot_formats",
            "--one",
            fmt,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout))


def wire(data_dir: Path, repeats: int) -> dict[str, list[dict[str, float]]]:
    """Snapshots over gRPC from a real server per format, alternating."""
    copy = data_dir.parent / "copy"
    if not copy.exists():
        shutil.copytree(data_dir, copy)
    servers = {
        fmt: Target(fmt, "metastore", data_dir.parent, ["--snapshot-format", fmt], data_dir=d)
        for fmt, d in zip(FORMATS, (data_dir, copy), strict=True)
    }
    out: dict[str, list[dict[str, float]]] = {f: [] for f in FORMATS}
    try:
        for server in servers.values():
            server.start()
        for r in range(repeats):
            for fmt in FORMATS if r % 2 == 0 else FORMATS[::-1]:
                server = servers[fmt]
                cpu0, wall0 = cpu_seconds(server.pid), time.perf_counter()
                size = _stream(server.endpoint)
                wall, cpu = time.perf_counter() - wall0, cpu_seconds(server.pid) - cpu0
                out[fmt].append({"wall_s": wall, "server_cpu_s": cpu, "bytes": size})
                print(fmt, "wire", out[fmt][-1], file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
    return out


def _stream(endpoint: str) -> int:
    digest, size = hashlib.sha256(), 0
    with grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 1 << 30)]) as ch:
        for msg in rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest()):
            digest.update(msg.blob)
            size += len(msg.blob)
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--value-bytes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--wire", action="store_true", help="also stream over gRPC from a real server")
    ap.add_argument("--one", choices=FORMATS, help=argparse.SUPPRESS)
    ap.add_argument("--heap", action="store_true", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.one:
        print(json.dumps(one(ns.data_dir, ns.one, ns.heap)))
        return
    data_dir = ns.data_dir or Path(tempfile.mkdtemp(prefix="snapbench-")) / "data"
    if not (data_dir / "db").exists():
        t = time.perf_counter()
        build(data_dir, ns.records, ns.value_bytes)
        print(f"built {data_dir} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    store_bytes = sum(f.stat().st_size for f in (data_dir / "db").iterdir())
    runs: dict[str, list[dict[str, float]]] = {f: [] for f in FORMATS}
    for r in range(ns.repeats):
        for fmt in FORMATS if r % 2 == 0 else FORMATS[::-1]:
            runs[fmt].append(_run(data_dir, fmt))
            print(fmt, runs[fmt][-1], file=sys.stderr)
    heap = {fmt: _run(data_dir, fmt, "--heap")["heap_peak_mib"] for fmt in FORMATS}
    summary = {
        "store_bytes": store_bytes,
        "records": ns.records,
        "value_bytes": ns.value_bytes,
        "median": {f: {k: statistics.median(x[k] for x in runs[f]) for k in runs[f][0]} for f in FORMATS},
        "heap_peak_mib": heap,
        "runs": runs,
    }
    if ns.wire:
        over = wire(data_dir, ns.repeats)
        summary["wire_median"] = {
            f: {k: statistics.median(x[k] for x in over[f]) for k in over[f][0]} for f in FORMATS
        }
        summary["wire_runs"] = over
    etcd, ours = summary["median"]["etcd"], summary["median"]["metastore"]
    print(json.dumps(summary["median"], indent=1))
    print(
        f"store {store_bytes / 2**30:.2f} GiB; etcd/metastore: wall {etcd['wall_s'] / ours['wall_s']:.2f}, "
        f"CPU {etcd['cpu_s'] / ours['cpu_s']:.2f}, bytes {etcd['bytes'] / ours['bytes']:.3f}; "
        f"heap peak MiB {heap}"
    )
    if ns.wire:
        we, wo = summary["wire_median"]["etcd"], summary["wire_median"]["metastore"]
        print(
            f"over gRPC: {json.dumps(summary['wire_median'])}; etcd/metastore: wall "
            f"{we['wall_s'] / wo['wall_s']:.2f}, server CPU {we['server_cpu_s'] / wo['server_cpu_s']:.2f}"
        )
    if ns.out:
        ns.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
