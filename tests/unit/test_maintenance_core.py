"""Maintenance in the pure core: snapshot format, hashes, incremental compaction, auto-compaction."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from metastore_core import errors
from metastore_core.engine import autocompact as ac
from metastore_core.engine import commands
from metastore_core.engine.ranges import range_at
from metastore_core.member.guard import DEFAULT_QUOTA, quota_bytes
from metastore_core.mvcc import hashing
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage import snapshot as S
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


def fill(e: Engine, n: int = 300, seed: int = 7) -> None:
    rnd = random.Random(seed)
    lease = e.write(pb.LeaseGrantRequest(ID=0x1234, TTL=60)).ID
    for i in range(n):
        key = b"key/%03d" % rnd.randrange(60)
        if rnd.random() < 0.15:
            e.write(pb.DeleteRangeRequest(key=key))
        else:
            value = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
            e.write(pb.PutRequest(key=key, value=value, lease=lease if i % 7 == 0 else 0))


def snapshot_bytes(storage: MemoryStorage | LevelDBStorage) -> bytes:
    buf = io.BytesIO()
    S.write(storage.view(), buf)
    return buf.getvalue()


def hash_kv(e: Engine, rev: int = 0) -> int:
    s = e.store
    return hashing.hash_kv(e.storage.view(), s.codec, rev or s.committed_rev, s.compact_rev)


# ------------------------------------------------------------------ snapshot format


def test_snapshot_is_512_aligned_plus_sha_and_verifies() -> None:
    e = Engine(MemoryStorage())
    fill(e)
    e.write(pb.CompactionRequest(revision=100))
    data = snapshot_bytes(e.storage)  # type: ignore[arg-type]
    assert len(data) % 512 == 32
    summary = S.verify(io.BytesIO(data))
    assert summary.header.revision == e.store.committed_rev
    assert summary.header.compact_revision == 100
    assert summary.header.member_id == e.store.ids.member_id


def test_hundred_random_corruptions_are_all_rejected() -> None:
    e = Engine(MemoryStorage())
    fill(e, 200)
    data = snapshot_bytes(e.storage)  # type: ignore[arg-type]
    rnd = random.Random(2024)
    kinds = {"flip": 0, "truncate": 0, "trailer": 0, "extend": 0}
    for i in range(100):
        d = bytearray(data)
        kind = ["flip", "flip", "truncate", "trailer", "extend"][i % 5]
        if kind == "flip":
            pos = rnd.randrange(len(d))
            d[pos] ^= 1 << rnd.randrange(8)
        elif kind == "truncate":
            d = d[: rnd.randrange(len(d))]
        elif kind == "trailer":
            d[-32:] = bytes(rnd.randrange(256) for _ in range(32))
        else:
            d += b"\0" * rnd.randrange(1, 600)
        kinds[kind] += 1
        with pytest.raises(S.SnapshotError) as info:
            S.verify(io.BytesIO(bytes(d)))
        assert 0 <= info.value.offset <= len(d)
    assert all(kinds.values())


def test_verify_reports_the_offset_of_a_damaged_record() -> None:
    e = Engine(MemoryStorage())
    fill(e, 50)
    data = bytearray(snapshot_bytes(e.storage))  # type: ignore[arg-type]
    data[S.HEADER_LEN + 12] ^= 0xFF  # inside the first record's key
    with pytest.raises(S.SnapshotError, match="CRC mismatch") as info:
        S.verify(io.BytesIO(bytes(data)))
    assert S.HEADER_LEN < info.value.offset < S.HEADER_LEN + 200


def test_restore_round_trip_serves_same_keys_revisions_and_leases(tmp_path: Path) -> None:
    src = LevelDBStorage(tmp_path / "src")
    e = Engine(src, crc=True)
    fill(e)
    e.write(pb.CompactionRequest(revision=150))
    snap = tmp_path / "snap.db"
    with open(snap, "wb") as f:
        S.write(src.view(), f)
    header = S.restore(snap, tmp_path / "restored")
    assert header.member_id != e.store.ids.member_id
    with pytest.raises(FileExistsError):
        S.restore(snap, tmp_path / "restored")
    dst = LevelDBStorage(tmp_path / "restored" / "db")
    r = Engine(dst)
    assert r.store.committed_rev == e.store.committed_rev
    assert r.store.compact_rev == 150
    assert r.store.ids.cluster_id == e.store.ids.cluster_id
    assert r.store.codec.crc
    everything = pb.RangeRequest(key=b"\0", range_end=b"\0")
    for rev in (150, 200, e.store.committed_rev):
        everything.revision = rev
        assert range_at(r.store, everything, rev) == range_at(e.store, everything, rev)
    assert sorted(r.lessor.leases) == sorted(e.lessor.leases) == [0x1234]
    assert r.lessor.leases[0x1234].keys == e.lessor.leases[0x1234].keys
    assert hash_kv(r) == hash_kv(e)
    src.close()
    dst.close()


def test_restore_refuses_a_damaged_snapshot_and_leaves_no_data_dir(tmp_path: Path) -> None:
    e = Engine(MemoryStorage())
    fill(e, 30)
    data = bytearray(snapshot_bytes(e.storage))  # type: ignore[arg-type]
    data[-40] ^= 1
    snap = tmp_path / "bad.db"
    snap.write_bytes(bytes(data))
    with pytest.raises(S.SnapshotError):
        S.restore(snap, tmp_path / "out")
    assert not (tmp_path / "out" / "db").exists()


# ------------------------------------------------------------------ hashes


def test_hash_kv_is_deterministic_across_stores_restarts_and_compaction_progress(tmp_path: Path) -> None:
    a = Engine(LevelDBStorage(tmp_path / "a"))
    b = Engine(MemoryStorage(), crc=True)
    fill(a)
    fill(b)
    assert a.store.ids.member_id != b.store.ids.member_id
    assert hash_kv(a) == hash_kv(b)
    assert hash_kv(a, 120) == hash_kv(b, 120) != hash_kv(a)
    a.write(pb.CompactionRequest(revision=120))
    # b compacts incrementally and is hashed half-way: the answer must not depend on progress
    b.store.incremental_compaction = True
    b.write(pb.CompactionRequest(revision=120))
    b.store.compact_step(10)
    b.commit()
    assert b.store.compact_pending
    assert hash_kv(a) == hash_kv(b)
    while b.store.compact_pending:
        b.store.compact_step(10)
        b.commit()
    assert hash_kv(a) == hash_kv(b)
    a2 = a.reopen()
    assert hash_kv(a2) == hash_kv(b)
    sa, sb = a2.store, b.store
    assert hashing.hash_all(
        a2.storage.view(), sa.codec, sa.committed_rev, sa.compact_rev
    ) == hashing.hash_all(b.storage.view(), sb.codec, sb.committed_rev, sb.compact_rev)
    a.storage.close()


# ------------------------------------------------------------------ incremental compaction


def test_incremental_compaction_matches_one_shot_and_interleaves_with_writes() -> None:
    one, inc = Engine(MemoryStorage()), Engine(MemoryStorage())
    fill(one, 400)
    fill(inc, 400)
    one.write(pb.CompactionRequest(revision=300))
    inc.store.incremental_compaction = True
    inc.write(pb.CompactionRequest(revision=300))
    steps = 0
    while inc.store.compact_pending:
        inc.store.compact_step(5)
        inc.commit()
        steps += 1
        # requests between chunks see the compacted revision already
        with pytest.raises(errors.Compacted):
            inc.store.check_rev(299)
    assert steps > 5
    everything = L.rev_range(0, 1 << 62)
    assert list(inc.storage.scan(*everything)) == list(one.storage.scan(*everything))
    assert len(inc.store.index) == len(one.store.index)


def test_a_compaction_cut_short_is_finished_at_start_up(tmp_path: Path) -> None:
    storage = LevelDBStorage(tmp_path / "db")
    e = Engine(storage)
    for i in range(50):
        e.write(pb.PutRequest(key=b"k%d" % (i % 5), value=b"v"))
    e.write(pb.DeleteRangeRequest(key=b"k0"))  # the newest revision is a tombstone
    top = e.store.committed_rev
    e.store.incremental_compaction = True
    e.write(pb.CompactionRequest(revision=top))
    e.store.compact_step(3)  # drops k0's history, tombstone included, then "crashes"
    e.commit()
    again = e.reopen()
    assert again.store.committed_rev == top
    assert again.store.compact_rev == top
    assert not again.store.compact_pending
    assert len(list(storage.scan(*L.rev_range(0, 1 << 62)))) == 4
    storage.close()


# ------------------------------------------------------------------ auto-compaction policies


def test_parse_duration_like_etcd() -> None:
    assert ac.parse_duration("1") == 3600
    assert ac.parse_duration("1h30m") == 5400
    assert ac.parse_duration("90s") == 90
    assert ac.parse_duration("500ms") == 0.5
    with pytest.raises(ValueError):
        ac.parse_duration("10 parsecs")


def test_periodic_policy_keeps_the_retention_window() -> None:
    p = ac.make_policy("periodic", "10s", now=0.0)
    assert isinstance(p, ac.Periodic)
    assert p.interval == 1.0
    got = []
    for t in range(1, 31):
        target = p.tick(float(t), rev=t * 10)  # revision grows by 10 a second
        if target is not None:
            got.append((t, target))
    # once the first window has passed, every 10 s: the newest sample at least 10 s old
    assert got == [(11, 10), (21, 110)]


def test_revision_policy_keeps_n_revisions() -> None:
    p = ac.make_policy("revision", "100", now=0.0)
    assert isinstance(p, ac.Revisional)
    assert p.tick(0, 50) is None
    assert p.tick(300, 1000) == 900
    assert p.tick(600, 1000) is None  # nothing new
    assert p.tick(900, 1500) == 1400
    assert ac.make_policy("periodic", "0", now=0.0) is None
    with pytest.raises(ValueError):
        ac.make_policy("sometimes", "1", now=0.0)


# ------------------------------------------------------------------ quota cost


def test_quota_cost_counts_what_may_add_data() -> None:
    put = pb.PutRequest(key=b"k", value=b"x" * 100)
    assert commands.cost(put) == 1 + 100 + commands.KV_OVERHEAD
    assert commands.cost(pb.DeleteRangeRequest(key=b"k")) == 0
    assert commands.cost(pb.CompactionRequest(revision=3)) == 0
    assert commands.cost(pb.LeaseGrantRequest(TTL=5)) > 0
    read_only = pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"k"))])
    assert commands.cost(read_only) == 0 and not commands.mutates(read_only)
    nested = pb.TxnRequest(
        failure=[pb.RequestOp(request_txn=pb.TxnRequest(success=[pb.RequestOp(request_put=put)]))]
    )
    assert commands.cost(nested) == commands.cost(put) and commands.mutates(nested)
    assert quota_bytes(0) == DEFAULT_QUOTA
    assert quota_bytes(-1) < 0


def test_one_key_with_a_long_history_is_compacted_in_bounded_pieces() -> None:
    e = Engine(MemoryStorage())
    for i in range(3000):
        e.write(pb.PutRequest(key=b"hot", value=b"%d" % i))
    e.write(pb.PutRequest(key=b"cold", value=b"c"))
    e.store.incremental_compaction = True
    e.write(pb.CompactionRequest(revision=3000))
    sizes = []
    while e.store.compact_pending:
        sizes.append(e.store.compact_step(500))
        e.commit()
    assert max(sizes) <= 500 and sum(sizes) == 2998 and len(sizes) >= 6
    assert [k for k, _ in e.store.index.all()] == [b"cold", b"hot"]
    assert len(list(e.storage.scan(*L.rev_range(0, 1 << 62)))) == 3  # hot@3000, hot@3001, cold
    assert range_at(e.store, pb.RangeRequest(key=b"hot"), 3000).kvs[0].value == b"2998"
