"""Snapshots end to end: etcdctl and `metastore snapshot` save, verify, restore, serve again."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from metastore_cli.main import app
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.storage import snapshot as S
from metastore_core.storage.memory import MemoryStorage

from conftest import ROOT, etcdctl, start_metastore

pytestmark = pytest.mark.peer


class Result:
    """What a CLI run gave: exit code and output, like subprocess.CompletedProcess."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def metastore(*args: str) -> Result:
    """Run the `metastore` CLI in-process (a new interpreter per call costs seconds on CI)."""
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def populate(endpoint: str) -> tuple[int, int]:
    """History with puts, overwrites, deletes, a lease with keys and a compaction; (lease, revision)."""
    rnd = random.Random(11)
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc.KVStub(ch)
        lease = rpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
        for i in range(150):
            key = b"app/%03d" % rnd.randrange(120)
            if rnd.random() < 0.1:
                kv.DeleteRange(pb.DeleteRangeRequest(key=key))
            else:
                kv.Put(
                    pb.PutRequest(
                        key=key, value=os.urandom(rnd.randrange(1, 300)), lease=lease if i % 9 == 0 else 0
                    )
                )
        kv.Put(pb.PutRequest(key=b"bin\x00\xff", value=b"\x00" * 70_000))  # spans blobs
        rev = kv.Put(pb.PutRequest(key=b"last", value=b"1")).header.revision
        kv.Compact(pb.CompactionRequest(revision=rev - 100, physical=True))
    return lease, rev


def dump(endpoint: str, rev: int) -> list[tuple[bytes, bytes, int, int, int, int]]:
    with grpc.insecure_channel(endpoint) as ch:
        resp = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
    return [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in resp.kvs]


@pytest.mark.parametrize("fmt", ["etcd", "metastore"])
def test_round_trip_save_verify_restore_serve(tmp_path: Path, fmt: str) -> None:
    src = start_metastore(tmp_path / "src", "--snapshot-format", fmt)
    try:
        lease, rev = populate(src.endpoint)
        before = {r: dump(src.endpoint, r) for r in (rev - 100, rev - 37, rev)}
        with grpc.insecure_channel(src.endpoint) as ch:
            hkv = rpc.MaintenanceStub(ch).HashKV(pb.HashKVRequest()).hash
            member = rpc.MaintenanceStub(ch).Status(pb.StatusRequest()).header.member_id

        # etcdctl accepts our stream and writes it out as is
        via_etcdctl = tmp_path / "etcdctl.snap"
        r = etcdctl(src.endpoint, "snapshot", "save", str(via_etcdctl))
        assert r.returncode == 0, r.stderr
        assert f"Snapshot saved at {via_etcdctl}" in r.stdout
        assert via_etcdctl.stat().st_size % 512 == 32

        snap = tmp_path / "ours.snap"
        r = metastore("snapshot", "save", str(snap), "--endpoints", src.endpoint)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"Snapshot saved at {snap}"
        assert not Path(str(snap) + ".part").exists()
        assert stat.S_IMODE(snap.stat().st_mode) == 0o600  # every key and value: private, as etcdctl
        # a snapshot is the store at one point: both say the same revision and keys
        for f in (via_etcdctl, snap):
            r = metastore("snapshot", "verify", str(f), "-w", "json")
            assert r.returncode == 0, r.stderr
            info = json.loads(r.stdout)
            assert info["valid"] and info["revision"] == rev and info["compact_revision"] == rev - 100
            assert info["format"] == fmt
    finally:
        src.stop()

    restored = tmp_path / "restored"
    r = metastore("snapshot", "restore", str(snap), "--data-dir", str(restored))
    assert r.returncode == 0, r.stderr
    r = metastore("snapshot", "restore", str(snap), "--data-dir", str(restored))
    assert r.returncode == 1 and "not empty" in r.stderr

    dst = start_metastore(restored)
    try:
        for at, kvs in before.items():
            assert dump(dst.endpoint, at) == kvs, f"revision {at} differs"
        with grpc.insecure_channel(dst.endpoint) as ch:
            m = rpc.MaintenanceStub(ch)
            assert m.HashKV(pb.HashKVRequest()).hash == hkv
            st = m.Status(pb.StatusRequest())
            assert st.header.revision == rev and st.header.member_id != member
            kv = rpc.KVStub(ch)
            with pytest.raises(grpc.RpcError) as info:
                kv.Range(pb.RangeRequest(key=b"last", revision=rev - 101))
            assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
            ttl = rpc.LeaseStub(ch).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True))
            assert ttl.grantedTTL == 600 and ttl.TTL > 0
            assert sorted(ttl.keys) == sorted(k[0] for k in before[rev] if k[5] == lease)
            # and it takes writes at the next revision
            assert kv.Put(pb.PutRequest(key=b"new", value=b"1")).header.revision == rev + 1
    finally:
        dst.stop()


def test_damaged_snapshots_are_rejected_by_verify_and_restore(tmp_path: Path) -> None:
    src = start_metastore(tmp_path / "src")
    try:
        with grpc.insecure_channel(src.endpoint) as ch:
            kv = rpc.KVStub(ch)
            for i in range(50):
                kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v" * i))
        snap = tmp_path / "s.snap"
        assert metastore("snapshot", "save", str(snap), "--endpoints", src.endpoint).returncode == 0
    finally:
        src.stop()
    data = snap.read_bytes()
    bad = tmp_path / "bad.snap"
    # three kinds through the CLI (the 100-case sweep runs in the unit tests, in-process)
    for name, damaged in (
        ("flip", data[:700] + bytes([data[700] ^ 0x10]) + data[701:]),
        ("truncated", data[:-100]),
        ("trailer", data[:-32] + bytes(32)),
    ):
        bad.write_bytes(damaged)
        r = metastore("snapshot", "verify", str(bad))
        assert r.returncode == 3, (name, r.stdout, r.stderr)
        assert "offset" in r.stderr
    r = metastore("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "out"))
    assert r.returncode == 3, r.stderr
    assert "nothing restored" in r.stderr
    assert not (tmp_path / "out" / "db").exists()


def test_save_needs_exactly_one_reachable_endpoint(tmp_path: Path) -> None:
    r = metastore("snapshot", "save", str(tmp_path / "x"), "--endpoints", "127.0.0.1:1,127.0.0.1:2")
    assert r.returncode == 1 and "one selected node" in r.stderr
    r = metastore(
        "snapshot", "save", str(tmp_path / "x"), "--endpoints", "127.0.0.1:1", "--dial-timeout", "0.5"
    )
    assert r.returncode == 7
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


class _Stalling(rpc.MaintenanceServicer):
    """A Snapshot stream that sends one chunk and then stalls, to be interrupted mid-way."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Snapshot(
        self, request: pb.SnapshotRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.SnapshotResponse]:
        yield pb.SnapshotResponse(remaining_bytes=1 << 20, blob=b"x" * 65536)  # past the write buffer
        self.release.wait(30)


def test_ctrl_c_during_save_leaves_no_partial_file(tmp_path: Path) -> None:
    servicer = _Stalling()
    server = grpc.server(ThreadPoolExecutor(2))
    rpc.add_MaintenanceServicer_to_server(servicer, server)
    ep = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    snap = tmp_path / "s.snap"
    part = tmp_path / "s.snap.part"
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metastore_cli",
                "snapshot",
                "save",
                str(snap),
                f"--endpoints={ep}",
            ],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 20
        while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        servicer.release.set()
        server.stop(0)
    assert proc.returncode == 130, err
    assert err == "Error: interrupted: no snapshot saved\n"
    assert not part.exists() and not snap.exists()


def test_restore_moves_its_progress_bar_through_both_passes(tmp_path: Path) -> None:
    store = MVCCStore(MemoryStorage())
    store.load()
    snap = tmp_path / "s.snap"
    with open(snap, "wb") as f:
        S.write(store.storage.view(), f)
    size = snap.stat().st_size
    seen: list[int] = []
    S.restore(snap, tmp_path / "restored", progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 2 * size  # verify, then the writes
