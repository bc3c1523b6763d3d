"""Engine semantics the model test does not reach: txn shape, ranges, compaction on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from metastore_core import errors
from metastore_core.engine.ranges import range_at
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


def put(e: Engine, k: bytes, v: bytes = b"v", lease: int = 0) -> pb.PutResponse:
    return e.write(pb.PutRequest(key=k, value=v, lease=lease))  # type: ignore[no-any-return]


def rng(e: Engine, **kw: object) -> pb.RangeResponse:
    req = pb.RangeRequest(**kw)  # type: ignore[arg-type]
    return range_at(e.store, req, e.store.check_rev(req.revision))


def test_empty_store_is_revision_one_and_first_put_is_two() -> None:
    e = Engine(MemoryStorage())
    assert e.store.committed_rev == 1
    assert put(e, b"a").header.revision == 2


def test_limit_count_and_more() -> None:
    e = Engine(MemoryStorage())
    for i in range(10):
        put(e, b"k%d" % i)
    r = rng(e, key=b"k", range_end=b"l", limit=3)
    assert (r.count, r.more, [kv.key for kv in r.kvs]) == (10, True, [b"k0", b"k1", b"k2"])
    r = rng(e, key=b"k", range_end=b"l", count_only=True)
    assert (r.count, list(r.kvs)) == (10, [])


def test_sort_by_mod_descending_and_keys_only() -> None:
    e = Engine(MemoryStorage())
    for k in (b"b", b"a", b"c"):
        put(e, k, b"value")
    r = rng(
        e,
        key=b"\0",
        range_end=b"\0",
        sort_target=pb.RangeRequest.MOD,
        sort_order=pb.RangeRequest.DESCEND,
        keys_only=True,
    )
    assert [kv.key for kv in r.kvs] == [b"c", b"a", b"b"]
    assert all(kv.value == b"" and kv.version == 1 for kv in r.kvs)


def test_sort_target_without_order_ascends() -> None:
    e = Engine(MemoryStorage())
    put(e, b"a", b"z")
    put(e, b"b", b"a")
    r = rng(e, key=b"a", range_end=b"c", sort_target=pb.RangeRequest.VALUE)
    assert [kv.key for kv in r.kvs] == [b"b", b"a"]


def test_txn_nested_headers_and_one_revision() -> None:
    e = Engine(MemoryStorage())
    put(e, b"x", b"1")
    req = pb.TxnRequest(
        compare=[pb.Compare(key=b"x", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=1)],
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"1")),
            pb.RequestOp(
                request_txn=pb.TxnRequest(
                    success=[pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"2"))],
                )
            ),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"zz")),
        ],
    )
    resp = e.write(req)
    assert resp.succeeded and resp.header.revision == 3
    assert resp.responses[0].response_put.header.revision == 3
    assert resp.responses[1].response_txn.HasField("header")
    assert resp.responses[1].response_txn.header.revision == 0
    assert resp.responses[2].response_delete_range.header.revision == 3
    assert {kv.key: kv.mod_revision for kv in rng(e, key=b"\0", range_end=b"\0").kvs} == {
        b"a": 3,
        b"b": 3,
        b"x": 2,
    }


def test_failing_txn_changes_nothing() -> None:
    e = Engine(MemoryStorage())
    put(e, b"a")
    req = pb.TxnRequest(
        success=[
            pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"1")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"1", lease=12345)),
        ]
    )
    with pytest.raises(errors.LeaseNotFound):
        e.write(req)
    assert e.store.committed_rev == 2 and e.store.applied_rev == 2
    assert rng(e, key=b"b").count == 0


def test_read_only_txn_does_not_bump() -> None:
    e = Engine(MemoryStorage())
    put(e, b"a")
    resp = e.write(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))]))
    assert resp.header.revision == 2 and e.store.committed_rev == 2


def test_ignore_value_and_lease_need_the_key() -> None:
    e = Engine(MemoryStorage())
    with pytest.raises(errors.KeyNotFound):
        e.write(pb.PutRequest(key=b"a", ignore_value=True))
    put(e, b"a", b"keep")
    e.write(pb.PutRequest(key=b"a", ignore_value=True))
    kv = rng(e, key=b"a").kvs[0]
    assert (kv.value, kv.version) == (b"keep", 2)


def test_lease_revoke_deletes_attached_keys_in_one_revision() -> None:
    e = Engine(MemoryStorage())
    lease = e.write(pb.LeaseGrantRequest(TTL=1)).ID
    assert e.lessor.require(lease).ttl == 2  # raised to the minimum
    put(e, b"a", lease=lease)
    put(e, b"b", lease=lease)
    put(e, b"c")
    resp = e.write(pb.LeaseRevokeRequest(ID=lease))
    assert resp.header.revision == 5
    assert [kv.key for kv in rng(e, key=b"\0", range_end=b"\0").kvs] == [b"c"]
    with pytest.raises(errors.LeaseNotFound):
        e.write(pb.LeaseRevokeRequest(ID=lease))


def test_compaction_removes_history_from_disk_and_survives_restart(tmp_path: Path) -> None:
    storage = LevelDBStorage(tmp_path / "db")
    e = Engine(storage)
    for i in range(5):
        put(e, b"a", b"%d" % i)
    e.write(pb.DeleteRangeRequest(key=b"a"))
    put(e, b"b")
    e.write(pb.CompactionRequest(revision=7))
    revs = [L.parse_rev_key(k) for k, _ in storage.scan(*L.rev_range(0, 1 << 62))]
    assert revs == [(8, 0, False)]  # only b's put survives; a's generation is gone
    e2 = e.reopen()
    assert (e2.store.committed_rev, e2.store.compact_rev) == (8, 7)
    assert len(e2.store.index) == 1
    with pytest.raises(errors.Compacted):
        e2.store.check_rev(6)
    storage.close()


def test_crc_records_detect_flips() -> None:
    storage = MemoryStorage()
    e = Engine(storage, crc=True)
    put(e, b"a", b"value")
    skey = L.rev_key(2, 0)
    rec = bytearray(storage.get(skey) or b"")
    rec[-1] ^= 0x40
    storage.write([(skey, bytes(rec))])
    with pytest.raises(L.CorruptRecord):
        Engine(storage)  # loading reads every record and checks its CRC


def test_a_load_reports_its_progress() -> None:
    """A large store loads for seconds: the member logs how far it got (every N records)."""
    storage = MemoryStorage()
    e = Engine(storage)
    for i in range(10):
        e.write(pb.PutRequest(key=b"k%d" % i, value=b"v"))
    store = MVCCStore(storage)
    store.LOAD_PROGRESS_EVERY = 3
    seen: list[tuple[int, int]] = []
    assert store.load(lambda records, revision: seen.append((records, revision))) == 10
    assert [r for r, _ in seen] == [3, 6, 9]
    assert [rev for _, rev in seen] == sorted(rev for _, rev in seen) and seen[-1][1] <= 11
