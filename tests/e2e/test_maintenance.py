"""Maintenance end to end: etcdctl alarm/defrag/hashkv/status, quota, auto-compaction (a full
disk: integration/test_storage_failures.py)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc

from conftest import etcdctl, start_metastore

pytestmark = pytest.mark.peer


def ctl_ok(endpoint: str, *args: str) -> str:
    r = etcdctl(endpoint, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def put_soon(endpoint: str, key: str, value: str, within: float = 5.0) -> None:
    """Put, retrying briefly: the reliability layer's write gate follows alarms on its own tick."""
    deadline = time.monotonic() + within
    while True:
        r = etcdctl(endpoint, "put", key, value)
        if r.returncode == 0 or time.monotonic() > deadline:
            assert r.returncode == 0, r.stderr
            return
        time.sleep(0.2)


def status(endpoint: str) -> dict:
    return json.loads(ctl_ok(endpoint, "endpoint", "status", "-w", "json"))[0]["Status"]


def test_status_defrag_hashkv_alarm_with_etcdctl(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    try:
        ep = p.endpoint
        with grpc.insecure_channel(ep) as ch:
            kv = rpc.KVStub(ch)
            for i in range(30):
                kv.Put(pb.PutRequest(key=b"k%d" % (i % 10), value=b"v" * 200 + b"%d" % i))
        ctl_ok(ep, "del", "k3")
        st = status(ep)
        assert st["header"]["revision"] == 32
        assert st["leader"] == st["header"]["member_id"]
        assert 0 < st["dbSizeInUse"] <= st["dbSize"]
        assert "errors" not in st
        table = ctl_ok(ep, "endpoint", "status", "-w", "table")
        assert "true" in table  # IS LEADER

        h32 = ctl_ok(ep, "endpoint", "hashkv").split(", ")[1].strip()
        h20 = ctl_ok(ep, "endpoint", "hashkv", "--rev", "20").split(", ")[1].strip()
        assert h32 != h20
        assert ctl_ok(ep, "compaction", "--physical", "20").strip() == "compacted revision 20"
        r = etcdctl(ep, "endpoint", "hashkv", "--rev", "19")
        assert r.returncode != 0 and "required revision has been compacted" in r.stderr
        r = etcdctl(ep, "endpoint", "hashkv", "--rev", "99")
        assert r.returncode != 0 and "future revision" in r.stderr
        h32_after = ctl_ok(ep, "endpoint", "hashkv").split(", ")[1].strip()

        out = ctl_ok(ep, "defrag")
        assert out.strip() == f"Finished defragmenting etcd member[{ep}]"
        assert ctl_ok(ep, "endpoint", "hashkv").split(", ")[1].strip() == h32_after

        # alarms: activate through the API, list, status errors, disarm
        with grpc.insecure_channel(ep) as ch:
            m = rpc.MaintenanceStub(ch)
            m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0, alarm=pb.CORRUPT))
            err = None
            try:
                rpc.KVStub(ch).Put(pb.PutRequest(key=b"x", value=b"y"))
            except grpc.RpcError as exc:
                err = exc
            assert err is not None and err.code() == grpc.StatusCode.DATA_LOSS
            assert err.details() == "etcdserver: corrupt cluster"
            assert rpc.KVStub(ch).Range(pb.RangeRequest(key=b"k1")).count == 1
        assert ctl_ok(ep, "alarm", "list").strip() == "alarm:CORRUPT"
        assert status(ep)["errors"] == ["alarm:CORRUPT "]
        p.stop()
        # alarms persist across a restart
        p = start_metastore(tmp_path / "data")
        ep = p.endpoint
        assert ctl_ok(ep, "alarm", "list").strip() == "alarm:CORRUPT"
        assert ctl_ok(ep, "endpoint", "hashkv").split(", ")[1].strip() == h32_after  # same after restart
        ctl_ok(ep, "alarm", "disarm")
        assert ctl_ok(ep, "alarm", "list").strip() == ""
        put_soon(ep, "x", "y")
    finally:
        p.stop()


def test_hashkv_is_the_same_on_two_data_dirs_with_the_same_writes(tmp_path: Path) -> None:
    a = start_metastore(tmp_path / "a")
    b = start_metastore(tmp_path / "b", "--enable-crc")
    try:
        for p in (a, b):
            with grpc.insecure_channel(p.endpoint) as ch:
                kv = rpc.KVStub(ch)
                for i in range(20):
                    kv.Put(pb.PutRequest(key=b"key%d" % (i % 7), value=b"value%d" % i))
                kv.DeleteRange(pb.DeleteRangeRequest(key=b"key2"))
                kv.Compact(pb.CompactionRequest(revision=10, physical=True))
        ha = ctl_ok(a.endpoint, "endpoint", "hashkv").split(", ")[1]
        hb = ctl_ok(b.endpoint, "endpoint", "hashkv").split(", ")[1]
        assert ha == hb
        with grpc.insecure_channel(a.endpoint) as ca, grpc.insecure_channel(b.endpoint) as cb:
            ra = rpc.MaintenanceStub(ca).Hash(pb.HashRequest())
            rb = rpc.MaintenanceStub(cb).Hash(pb.HashRequest())
            assert ra.hash == rb.hash
            kv = rpc.MaintenanceStub(ca).HashKV(pb.HashKVRequest(revision=15))
            assert kv.compact_revision == 10 and kv.header.revision == 22
    finally:
        a.stop()
        b.stop()


def test_quota_raises_nospace_reads_and_deletes_work_until_disarm(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--quota-backend-bytes", "400000")
    try:
        ep = p.endpoint
        value = b"v" * 20_000
        stored = 0
        with grpc.insecure_channel(ep) as ch:
            kv = rpc.KVStub(ch)
            m = rpc.MaintenanceStub(ch)
            err = None
            for i in range(200):
                try:
                    kv.Put(pb.PutRequest(key=b"big/%03d" % i, value=value))
                    stored += 1
                except grpc.RpcError as exc:
                    err = exc
                    break
            assert err is not None, "the quota never triggered"
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.details() == "etcdserver: mvcc: database space exceeded"
            assert 5 < stored < 30
            alarms = m.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET)).alarms
            assert [(a.alarm) for a in alarms] == [pb.NOSPACE]
            # txn with a put and lease grant are refused; reads, deletes, read-only txns work
            for call in (
                lambda: kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t"))])),
                lambda: rpc.LeaseStub(ch).LeaseGrant(pb.LeaseGrantRequest(TTL=10)),
                lambda: kv.Put(pb.PutRequest(key=b"small", value=b"1")),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert kv.Range(pb.RangeRequest(key=b"big/", range_end=b"big0")).count == stored
            kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"big/000"))]))
            rev = kv.DeleteRange(pb.DeleteRangeRequest(key=b"big/", range_end=b"big0")).header.revision
            kv.Compact(pb.CompactionRequest(revision=rev, physical=True))
            m.Defragment(pb.DefragmentRequest())
            # still capped until the alarm is disarmed, as etcd
            with pytest.raises(grpc.RpcError):
                kv.Put(pb.PutRequest(key=b"small", value=b"1"))
            assert "alarm:NOSPACE" in status(ep)["errors"][0]
        ctl_ok(ep, "alarm", "disarm")
        put_soon(ep, "small", "1")
    finally:
        p.stop()


def test_auto_compaction_periodic(tmp_path: Path) -> None:
    a = start_metastore(
        tmp_path / "a", "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s"
    )
    try:
        with grpc.insecure_channel(a.endpoint) as ch:
            kv = rpc.KVStub(ch)
            deadline = time.monotonic() + 8
            compacted = 0
            while time.monotonic() < deadline and compacted <= 1:
                kv.Put(pb.PutRequest(key=b"tick", value=b"x"))
                time.sleep(0.05)
                compacted = rpc.MaintenanceStub(ch).HashKV(pb.HashKVRequest()).compact_revision
            assert compacted > 1, "periodic auto-compaction never ran"
            # the last second of history is kept
            current = kv.Range(pb.RangeRequest(key=b"tick")).header.revision
            assert current - compacted >= 5
        assert "auto-compaction: compacted to revision" in a.output()
    finally:
        a.stop()


def test_bad_auto_compaction_flags_are_refused(tmp_path: Path) -> None:
    from conftest import ROOT

    r = subprocess.run(
        [
            "python",
            "-m",
            "metastore_cli",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--auto-compaction-mode",
            "sometimes",
            "--auto-compaction-retention",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 2
    assert "--auto-compaction-mode sometimes: must be periodic or revision" in r.stderr
