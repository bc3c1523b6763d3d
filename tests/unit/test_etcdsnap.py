"""etcd-format snapshots in the pure core: our store -> etcd's buckets -> a new store, and the
layout checks (the round trips against a real etcd are in tests/e2e/test_etcd_snapshot.py)."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest

from metastore_core.engine.ranges import range_at
from metastore_core.mvcc import hashing
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.authpb import auth_pb2
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.leasepb.lease_pb2 import Lease
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import etcdlayout as E
from metastore_core.storage import etcdsnap
from metastore_core.storage import layout as L
from metastore_core.storage.bbolt.format import LEAF_ELEMENT, BoltError
from metastore_core.storage.bbolt.reader import BoltReader
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine

MEMBER = E.Member(0xBDAE9BBC11DD390D, "ref", ["http://127.0.0.1:2380"], ["http://127.0.0.1:2379"])


def history(e: Engine, n: int = 400, seed: int = 5) -> int:
    """Puts, overwrites, deletes, two leases with keys, a compaction; the lease with keys."""
    rnd = random.Random(seed)
    lease = e.write(pb.LeaseGrantRequest(ID=0x1234, TTL=600)).ID
    e.write(pb.LeaseGrantRequest(ID=0x99, TTL=30))
    for i in range(n):
        key = b"k/%03d" % rnd.randrange(80)
        if rnd.random() < 0.15:
            e.write(pb.DeleteRangeRequest(key=key))
        else:
            e.write(
                pb.PutRequest(key=key, value=rnd.randbytes(rnd.randrange(0, 300)), lease=lease * (i % 5 == 0))
            )
    e.write(pb.PutRequest(key=b"big", value=b"\xff" * 20_000))  # spans overflow pages
    e.write(pb.CompactionRequest(revision=e.store.committed_rev // 2))
    return lease


def snapshot_of(storage: MemoryStorage, members: list[E.Member] | None = None) -> bytes:
    buf = io.BytesIO()
    etcdsnap.write(storage.view(), buf, [MEMBER] if members is None else members)
    return buf.getvalue()


def test_store_to_etcd_buckets_and_back_keeps_every_revision(tmp_path: Path) -> None:
    e = Engine(MemoryStorage(), crc=True)  # framing is ours alone: etcd's records carry none
    lease = history(e)
    rev, compact = e.store.committed_rev, e.store.compact_rev
    data = snapshot_of(e.storage)  # type: ignore[arg-type]
    assert len(data) % 512 == 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
    path = tmp_path / "s.db"
    path.write_bytes(data)
    found = etcdsnap.verify(path)
    assert (found.revision, found.compact_revision) == (rev, compact)
    assert found.members == [MEMBER.id] and found.leases == 2

    for crc in (False, True):  # restored with or without our record framing
        target = tmp_path / f"dir-{crc}"
        restored = etcdsnap.restore(path, target, etcdsnap.RestoreOptions(member_id=7, crc=crc))
        assert restored.member_id == 7
        storage = LevelDBStorage(target / "db")
        try:
            again = MVCCStore(storage)
            again.load()
            assert again.codec.crc == crc
            assert again.committed_rev == rev and again.compact_rev == compact
            assert again.consistent_index == e.store.consistent_index
            for at in (compact, compact + 40, rev):
                want = range_at(e.store, pb.RangeRequest(key=b"\0", range_end=b"\0"), at)
                got = range_at(again, pb.RangeRequest(key=b"\0", range_end=b"\0"), at)
                assert got.kvs == want.kvs, f"revision {at}"
            # the records are the same bytes: the same history hash, whatever the framing
            view = storage.view()
            assert hashing.hash_kv(view, again.codec, rev, compact) == hashing.hash_kv(
                e.storage.view(), e.store.codec, rev, compact
            )
            leases = {
                L.parse_lease_key(k): L.parse_lease_value(again.codec.decode(v))
                for k, v in view.scan(b"l", b"m")
            }
            assert leases == {lease: (600, 0), 0x99: (30, 0)}
            view.close()
        finally:
            storage.close()


def test_buckets_are_etcds_names_and_encodings() -> None:
    e = Engine(MemoryStorage())
    lease = history(e, n=50)
    e.lessor.set_checkpoint(lease, 123)
    e.commit()
    role = auth_pb2.Role(name=b"reader", keyPermission=[auth_pb2.Permission(key=b"/app", range_end=b"/apq")])
    e.storage.write(
        [
            (
                L.USER_PREFIX + b"root",
                auth_pb2.User(name=b"root", password=b"$2a$10$x", roles=["root"]).SerializeToString(),
            ),
            (L.ROLE_PREFIX + b"reader", role.SerializeToString()),
            (L.META_AUTH_ENABLED, b"1"),
            (L.META_AUTH_REVISION, L.u64(9)),
        ]
    )
    data = snapshot_of(e.storage)  # type: ignore[arg-type]
    r = BoltReader(data, len(data) - 32)
    buckets: dict[bytes, dict[bytes, bytes]] = {}
    for path, item in r.walk():
        if path:
            buckets[path[0]][item.key] = item.value
        else:
            buckets[item.key] = {}
    assert sorted(buckets) == sorted(E.BUCKETS)
    assert buckets[E.META][E.CONSISTENT_INDEX] == e.store.consistent_index.to_bytes(8, "big")
    compact = e.store.compact_rev
    assert buckets[E.META][E.FINISHED_COMPACT] == compact.to_bytes(8, "big") + b"_" + bytes(8)
    assert Lease.FromString(buckets[E.LEASE][lease.to_bytes(8, "big")]) == Lease(
        ID=lease, TTL=600, RemainingTTL=123
    )
    assert buckets[E.AUTH] == {E.AUTH_ENABLED: b"\x01", E.AUTH_REVISION: (9).to_bytes(8, "big")}
    assert buckets[E.AUTH_ROLES] == {b"reader": role.SerializeToString()}
    assert list(buckets[E.AUTH_USERS]) == [b"root"]
    assert buckets[E.CLUSTER] == {b"clusterVersion": b"3.4.0"}
    member = json.loads(buckets[E.MEMBERS][b"bdae9bbc11dd390d"])
    assert member == {
        "id": MEMBER.id,
        "peerURLs": MEMBER.peer_urls,
        "name": "ref",
        "clientURLs": MEMBER.client_urls,
    }
    keys = list(buckets[E.KEY])
    assert keys == sorted(keys) and all(len(k) in (17, 18) and k[8:9] == b"_" for k in keys)
    tomb = next(k for k in keys if k.endswith(b"t"))
    main = int.from_bytes(tomb[:8], "big")
    assert KeyValue.FromString(buckets[E.KEY][tomb]).mod_revision == main


def test_restore_maps_auth_and_keeps_the_one_member_id(tmp_path: Path) -> None:
    e = Engine(MemoryStorage())
    user = auth_pb2.User(name=b"alice", password=b"$2a$10$abc", roles=["reader"]).SerializeToString()
    e.storage.write([(L.USER_PREFIX + b"alice", user), (L.META_AUTH_ENABLED, b"1")])
    e.write(pb.PutRequest(key=b"a", value=b"1"))
    path = tmp_path / "s.db"
    path.write_bytes(snapshot_of(e.storage))  # type: ignore[arg-type]
    r = etcdsnap.restore(path, tmp_path / "d", etcdsnap.RestoreOptions(keep_member_id=True))
    assert r.member_id == MEMBER.id
    storage = LevelDBStorage(tmp_path / "d" / "db")
    try:
        assert storage.get(L.USER_PREFIX + b"alice") == user
        assert storage.get(L.META_AUTH_ENABLED) == b"1"
        assert L.parse_u64(storage.get(L.META_MEMBER_ID) or b"") == MEMBER.id
    finally:
        storage.close()
    path.write_bytes(snapshot_of(e.storage, members=[]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs one member"):
        etcdsnap.restore(path, tmp_path / "d2", etcdsnap.RestoreOptions(keep_member_id=True))
    assert not (tmp_path / "d2" / "db").exists()


@pytest.mark.parametrize(
    "bucket, key, value, match",
    [
        (E.KEY, b"\0" * 8 + b"-" + b"\0" * 8, KeyValue(key=b"a").SerializeToString(), "not a revision key"),
        (E.KEY, E.rev_bytes(3), b"\xff\xff", "not an mvccpb.KeyValue"),
        (
            E.KEY,
            E.rev_bytes(3),
            KeyValue(key=b"a", mod_revision=2, create_revision=2, version=1).SerializeToString(),
            "says mod 2",
        ),
        (E.KEY, E.rev_bytes(3, tombstone=True), KeyValue().SerializeToString(), "without a key"),
        (E.KEY, E.rev_bytes(1 << 63, tombstone=True), KeyValue(key=b"a").SerializeToString(), "out of range"),
        (E.LEASE, (5).to_bytes(8, "big"), Lease(ID=6, TTL=5).SerializeToString(), "record says ID 6"),
        (E.LEASE, b"\x05", Lease(ID=5, TTL=5).SerializeToString(), "lease key of 1 bytes"),
        (E.META, E.CONSISTENT_INDEX, b"\x01", "consistent_index of 1 bytes"),
        (E.META, E.FINISHED_COMPACT, b"\x01" * 8, "not a revision key"),
        (E.MEMBERS, b"1", b"{}", "not etcd's JSON"),
    ],
)
def test_records_without_etcds_layout_are_refused_at_their_offset(
    tmp_path: Path, bucket: bytes, key: bytes, value: bytes, match: str
) -> None:
    from metastore_core.storage.bbolt import writer

    buckets = {E.KEY: [], E.META: [], E.LEASE: [], E.MEMBERS: []}
    buckets[bucket] = [(key, value)]
    body = b"".join(writer.encode(writer.plan([(n, (lambda r=r: r)) for n, r in sorted(buckets.items())])))
    data = body + hashlib.sha256(body).digest()
    with pytest.raises(BoltError, match=match) as info:
        etcdsnap.verify_data(data, len(data))
    at = info.value.offset  # names the element: its header points at the bad key
    _, pos, ksize, _ = LEAF_ELEMENT.unpack_from(data, at)
    assert data[at + pos : at + pos + ksize] == key


def test_trailer_rules_are_etcdctls(tmp_path: Path) -> None:
    e = Engine(MemoryStorage())
    e.write(pb.PutRequest(key=b"a", value=b"1"))
    data = snapshot_of(e.storage)  # type: ignore[arg-type]
    body = data[:-32]
    with pytest.raises(BoltError, match="SHA-256 trailer mismatch") as info:
        etcdsnap.verify_data(body + bytes(32), len(data))
    assert info.value.offset == len(body)
    with pytest.raises(BoltError, match=r"no SHA-256 trailer.*--skip-hash-check"):
        etcdsnap.verify_data(body, len(body))
    assert etcdsnap.verify_data(body, len(body), skip_hash_check=True).sha256 == ""
    padded = body + bytes(512) + hashlib.sha256(body + bytes(512)).digest()
    with pytest.raises(BoltError, match="512 bytes after the last page"):
        etcdsnap.verify_data(padded, len(padded))
