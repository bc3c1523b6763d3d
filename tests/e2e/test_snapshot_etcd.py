"""etcd-format snapshots against a real etcd 3.4, both ways: etcd -> metastore and metastore -> etcd.

Each direction fills a store with history (puts, overwrites, deletes, a txn, leases with and
without keys, a compaction), takes a snapshot with `etcdctl snapshot save`, checks that
`etcdctl snapshot status` and `metastore snapshot status` print the same thing, restores it on
the other side and compares every key at several revisions, every lease with its keys, and that
the revision counter goes on.
"""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from metastore_cli.main import app
from metastore_core.pb.authpb import auth_pb2
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.storage import layout as L
from metastore_core.storage.leveldb import LevelDBStorage
from tests.support import free_port

from conftest import ROOT, Proc, etcdctl, start_etcd, start_metastore

pytestmark = pytest.mark.peer

Row = tuple[bytes, bytes, int, int, int, int]


def cli(*args: str) -> tuple[int, str, str]:
    """The `metastore` CLI in-process: (exit code, stdout, stderr)."""
    r = CliRunner().invoke(app, list(args))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def fill(endpoint: str) -> tuple[dict[int, list[int]], int, int]:
    """History through the etcd API; ({lease: [TTL]}, compacted revision, last revision)."""
    rnd = random.Random(17)
    with grpc.insecure_channel(endpoint) as ch:
        kv, lease = rpc.KVStub(ch), rpc.LeaseStub(ch)
        held = lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x1234, TTL=900)).ID
        lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x77, TTL=500))  # a lease without keys
        for i in range(120):
            key = b"app/%02d" % rnd.randrange(40)
            if rnd.random() < 0.15:
                kv.DeleteRange(pb.DeleteRangeRequest(key=key))
            else:
                value = rnd.randbytes(rnd.randrange(1, 200))
                kv.Put(pb.PutRequest(key=key, value=value, lease=held if i % 7 == 0 else 0))
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"txn/%d" % i, value=b"t")) for i in range(3)]
        kv.Txn(pb.TxnRequest(success=ops))
        kv.Put(pb.PutRequest(key=b"big\x00\xff", value=b"\xab" * 9000))  # past a page: overflow pages
        rev = kv.Put(pb.PutRequest(key=b"last", value=b"1")).header.revision
        kv.Compact(pb.CompactionRequest(revision=rev - 60, physical=True))
    return {0x1234: [900], 0x77: [500]}, rev - 60, rev


def dump(endpoint: str, rev: int) -> list[Row]:
    with grpc.insecure_channel(endpoint) as ch:
        resp = rpc.KVStub(ch).Range(pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev))
    return [(k.key, k.value, k.create_revision, k.mod_revision, k.version, k.lease) for k in resp.kvs]


def leases(endpoint: str) -> dict[int, tuple[int, list[bytes]]]:
    """{lease ID: (granted TTL, sorted keys)}."""
    out = {}
    with grpc.insecure_channel(endpoint) as ch:
        stub = rpc.LeaseStub(ch)
        for item in stub.LeaseLeases(pb.LeaseLeasesRequest()).leases:
            ttl = stub.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=item.ID, keys=True))
            out[item.ID] = (ttl.grantedTTL, sorted(ttl.keys))
    return out


def state(endpoint: str, compact: int, rev: int) -> dict[object, object]:
    """Everything compared across a restore: keys at three revisions, and the leases."""
    return {
        **{r: dump(endpoint, r) for r in (compact, (compact + rev) // 2, rev)},
        "leases": leases(endpoint),
    }


def same_status(snap: Path) -> None:
    """`metastore snapshot status` prints what `etcdctl snapshot status` prints, in every -w."""
    for w in ("simple", "json", "table"):
        want = etcdctl("127.0.0.1:1", "snapshot", "status", str(snap), "-w", w)
        assert want.returncode == 0, want.stderr
        code, out, err = cli("snapshot", "status", str(snap), "-w", w)
        assert code == 0, err
        assert out == want.stdout, w


def next_rev(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as ch:
        return int(rpc.KVStub(ch).Put(pb.PutRequest(key=b"after", value=b"x")).header.revision)


def serves_what_was_saved(dst: Proc, before: dict[object, object], compact: int, rev: int) -> None:
    """The restored server: the same keys and leases, the compaction kept, the next write at rev + 1."""
    try:
        assert state(dst.endpoint, compact, rev) == before
        with grpc.insecure_channel(dst.endpoint) as ch, pytest.raises(grpc.RpcError) as info:
            rpc.KVStub(ch).Range(pb.RangeRequest(key=b"last", revision=compact - 1))
        assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert next_rev(dst.endpoint) == rev + 1
    finally:
        dst.stop()


def test_etcd_snapshot_restores_into_metastore(tmp_path: Path) -> None:
    src = start_etcd(tmp_path / "etcd")
    try:
        _, compact, rev = fill(src.endpoint)
        before = state(src.endpoint, compact, rev)
        for args in (("user", "add", "root:pw"), ("role", "add", "reader"), ("user", "add", "alice:pw2")):
            assert etcdctl(src.endpoint, *args).returncode == 0
        etcdctl(src.endpoint, "role", "grant-permission", "reader", "read", "app/", "--prefix")
        etcdctl(src.endpoint, "user", "grant-role", "alice", "reader")
        # auth stays off: the restored member must serve this test without credentials
        snap = tmp_path / "etcd.snap"
        r = etcdctl(src.endpoint, "snapshot", "save", str(snap))
        assert r.returncode == 0, r.stderr
    finally:
        src.stop()

    same_status(snap)
    code, out, err = cli("snapshot", "verify", str(snap), "-w", "json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["format"], info["revision"], info["compact_revision"]) == ("etcd", rev, compact)
    assert (info["leases"], info["users"], info["roles"], info["auth_enabled"]) == (2, 2, 1, False)

    data = tmp_path / "restored"
    code, out, err = cli("snapshot", "restore", str(snap), "--data-dir", str(data))
    assert code == 0, err
    assert f"revision {rev}, compacted {compact}" in out
    storage = LevelDBStorage(data / "db")  # users and roles, as the auth store keeps them
    try:
        alice = auth_pb2.User.FromString(storage.get(L.USER_PREFIX + b"alice") or b"")
        reader = auth_pb2.Role.FromString(storage.get(L.ROLE_PREFIX + b"reader") or b"")
        assert list(alice.roles) == ["reader"] and alice.password.startswith(b"$2a$")
        assert [(p.permType, p.key, p.range_end) for p in reader.keyPermission] == [(0, b"app/", b"app0")]
        assert storage.get(L.USER_PREFIX + b"root") is not None
        assert storage.get(L.META_AUTH_ENABLED) == b"0"
    finally:
        storage.close()

    serves_what_was_saved(start_metastore(data), before, compact, rev)


def test_metastore_snapshot_restores_into_etcd(tmp_path: Path) -> None:
    src = start_metastore(tmp_path / "src")
    try:
        _, compact, rev = fill(src.endpoint)
        before = state(src.endpoint, compact, rev)
        snap = tmp_path / "ours.snap"
        r = etcdctl(src.endpoint, "snapshot", "save", str(snap))
        assert r.returncode == 0, r.stderr
        mine = tmp_path / "via-cli.snap"
        code, _, err = cli("snapshot", "save", str(mine), "--endpoints", src.endpoint)
        assert code == 0, err
    finally:
        src.stop()
    assert snap.stat().st_size % 512 == 32
    same_status(snap)
    same_status(mine)

    peer = free_port()
    restored = tmp_path / "etcd-restored"
    r = etcdctl(
        "127.0.0.1:1",
        "snapshot",
        "restore",
        str(snap),
        "--data-dir",
        str(restored),
        "--name",
        "ref",
        "--initial-cluster",
        f"ref=http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{peer}",
    )
    assert r.returncode == 0, r.stderr
    serves_what_was_saved(start_etcd(restored, peer=peer), before, compact, rev)


def test_damaged_etcd_snapshots_are_refused_with_the_offset(tmp_path: Path) -> None:
    src = start_metastore(tmp_path / "src")
    try:
        fill(src.endpoint)
        snap = tmp_path / "s.snap"
        assert cli("snapshot", "save", str(snap), "--endpoints", src.endpoint)[0] == 0
    finally:
        src.stop()
    data = snap.read_bytes()
    root = int.from_bytes(data[16 + 16 : 16 + 24], "little")  # meta 0's root bucket page
    bad = tmp_path / "bad.snap"
    for name, damaged, where in (
        ("truncated", data[:-100], "truncated"),
        ("page id", data[: root * 4096] + b"\x09" + data[root * 4096 + 1 :], f"page {root} says it is page"),
        ("trailer", data[:-32] + bytes(32), "SHA-256 trailer mismatch"),
        ("value byte", data[: 3 * 4096 + 2000] + b"\x00\x01" + data[3 * 4096 + 2002 :], "offset"),
    ):
        bad.write_bytes(damaged)
        for command in ("verify", "status"):
            code, out, err = cli("snapshot", command, str(bad), "-w", "json")
            assert code == 3, (name, out, err)
            assert where in err and "offset" in err, (name, err)
            assert json.loads(out)["valid"] is False
        code, _, err = cli("snapshot", "restore", str(bad), "--data-dir", str(tmp_path / name))
        assert code == 3 and "nothing restored" in err, (name, err)
        assert not (tmp_path / name / "db").exists()


def test_progress_shows_on_a_terminal_and_not_in_a_pipe(tmp_path: Path) -> None:
    snap = tmp_path / "s.snap"
    src = start_metastore(tmp_path / "src")
    try:
        with grpc.insecure_channel(src.endpoint) as ch:
            rpc.KVStub(ch).Put(pb.PutRequest(key=b"k", value=os.urandom(300_000)))
        assert cli("snapshot", "save", str(snap), "--endpoints", src.endpoint)[0] == 0
    finally:
        src.stop()
    args = [sys.executable, "-m", "metastore_cli", "snapshot", "verify", str(snap)]
    piped = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert piped.returncode == 0 and piped.stderr == ""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdout and stderr are the terminal
        os.chdir(ROOT)
        os.execv(sys.executable, args)
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"verify" in seen and b"\xe2\x94\x81" in seen  # the label and the bar's line drawing
    assert b"valid etcd snapshot" in seen
