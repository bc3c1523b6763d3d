"""The lessor with an injected clock: grant, renew, expiry, attachments, checkpoints, restart.

Time is the engine's `now` (plain float seconds); nothing here sleeps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metastore_core import errors
from metastore_core.engine.lease import MAX_TTL, RESTART_EXTEND, Lessor, checkpoint_value
from metastore_core.engine.ranges import range_at
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


def grant(e: Engine, ttl: int, lease_id: int = 0) -> int:
    return int(e.write(pb.LeaseGrantRequest(ID=lease_id, TTL=ttl)).ID)


def put(e: Engine, k: bytes, lease: int = 0, **kw: bool) -> pb.PutResponse:
    return e.write(pb.PutRequest(key=k, value=b"v", lease=lease, **kw))  # type: ignore[no-any-return]


def keys(e: Engine) -> list[bytes]:
    req = pb.RangeRequest(key=b"\0", range_end=b"\0")
    return [kv.key for kv in range_at(e.store, req, e.store.committed_rev).kvs]


def checkpoint(e: Engine, cps: list[tuple[int, int]]) -> None:
    e.write(
        pb.LeaseCheckpointRequest(checkpoints=[pb.LeaseCheckpoint(ID=i, remaining_TTL=r) for i, r in cps])
    )


def restart(e: Engine, now: float) -> Engine:
    e2 = e.reopen()
    e2.now = now
    e2.lessor.load(now)
    return e2


# ---------------------------------------------------------------- grant
def test_grant_clamps_ttl_and_picks_positive_ids() -> None:
    e = Engine(MemoryStorage())
    a = e.write(pb.LeaseGrantRequest(TTL=1))
    b = e.write(pb.LeaseGrantRequest(TTL=-5))
    assert (a.TTL, b.TTL) == (2, 2)
    assert a.ID > 0 and b.ID > 0 and a.ID != b.ID
    assert a.header.revision == 1  # a grant does not bump the revision
    assert e.write(pb.LeaseGrantRequest(ID=7, TTL=MAX_TTL)).TTL == MAX_TTL


def test_grant_refusals_carry_etcd_errors() -> None:
    e = Engine(MemoryStorage())
    grant(e, 10, 7)
    with pytest.raises(errors.LeaseExists):
        grant(e, 10, 7)
    with pytest.raises(errors.LeaseTTLTooLarge):
        grant(e, MAX_TTL + 1, 8)
    with pytest.raises(errors.InvalidRequest, match="invalid lease ID -1"):
        grant(e, 10, -1)
    assert set(e.lessor.leases) == {7}


# ---------------------------------------------------------------- expiry and renewal
def test_due_exactly_at_deadline_never_before() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    assert e.lessor.expired(9.999) == []
    assert not e.lessor.is_due(lid, 9.999)
    assert e.lessor.expired(10.0) == [lid]
    assert e.lessor.next_deadline() == 10.0


def test_renew_moves_deadline_and_unknown_gives_zero() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    assert e.lessor.renew(lid, 8.0) == 10
    assert e.lessor.expired(17.9) == []  # the old deadline (10) is stale
    assert e.lessor.expired(18.0) == [lid]
    assert e.lessor.renew(12345, 8.0) == 0


def test_due_leases_stay_due_until_revoked_and_limit_applies() -> None:
    e = Engine(MemoryStorage())
    ids = [grant(e, 5 + i) for i in range(5)]
    assert e.lessor.expired(100.0, limit=2) == ids[:2]
    assert e.lessor.expired(100.0) == ids  # nothing revoked: all still due, earliest first
    e.write(pb.LeaseRevokeRequest(ID=ids[0]))
    assert e.lessor.expired(100.0) == ids[1:]


def test_a_renewal_after_the_deadline_but_before_revocation_wins() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    assert e.lessor.expired(10.5) == [lid]
    assert e.lessor.renew(lid, 10.5) == 10  # a keep-alive that was queued during a stall
    assert not e.lessor.is_due(lid, 10.5)
    assert e.lessor.expired(10.5) == []


def test_time_to_live_truncates_like_etcd() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    assert e.lessor.time_to_live(lid, 0.5) == (9, 10)
    assert e.lessor.time_to_live(lid, 11.0) == (0, 10)  # due, not yet revoked
    assert e.lessor.time_to_live(999, 0.0) is None


def test_renewals_do_not_grow_the_heap_without_bound() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    for i in range(10_000):
        e.lessor.renew(lid, float(i))
    assert len(e.lessor._due) <= 2 * len(e.lessor.leases) + 1024
    assert e.lessor.expired(10_008.9) == []
    assert e.lessor.expired(10_009.0) == [lid]


# ---------------------------------------------------------------- attachments and revocation
def test_put_attaches_detaches_and_ignore_lease_keeps() -> None:
    e = Engine(MemoryStorage())
    a, b = grant(e, 10), grant(e, 10)
    put(e, b"k", a)
    put(e, b"j", a)
    assert e.lessor.leases[a].keys == {b"k", b"j"}
    put(e, b"k", b)  # moved to b
    put(e, b"j")  # a Put without ignore_lease detaches
    assert (e.lessor.leases[a].keys, e.lessor.leases[b].keys) == (set(), {b"k"})
    put(e, b"k", ignore_lease=True)
    assert e.lessor.leases[b].keys == {b"k"}
    put(e, b"j", ignore_lease=True)  # a key without a lease: etcd accepts, lease stays 0
    assert e.store.index.get(b"j").lease == 0  # type: ignore[union-attr]
    e.write(pb.DeleteRangeRequest(key=b"k"))
    assert e.lessor.leases[b].keys == set()


def test_revoke_deletes_attached_keys_in_one_revision() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    for k in (b"a", b"b", b"c"):
        put(e, k, lid)
    put(e, b"z")
    rev = e.store.committed_rev
    resp = e.write(pb.LeaseRevokeRequest(ID=lid))
    assert resp.header.revision == rev + 1
    assert keys(e) == [b"z"]
    with pytest.raises(errors.LeaseNotFound):
        e.write(pb.LeaseRevokeRequest(ID=lid))
    with pytest.raises(errors.LeaseNotFound):
        put(e, b"q", lid)


def test_revoke_of_a_lease_without_keys_keeps_the_revision() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    rev = e.store.committed_rev
    assert e.write(pb.LeaseRevokeRequest(ID=lid)).header.revision == rev


def test_txn_compares_on_lease() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 10)
    put(e, b"k", lid)
    cmp = pb.Compare(key=b"k", target=pb.Compare.LEASE, result=pb.Compare.EQUAL, lease=lid)
    assert e.write(pb.TxnRequest(compare=[cmp])).succeeded
    cmp.lease = lid + 1
    assert not e.write(pb.TxnRequest(compare=[cmp])).succeeded


# ---------------------------------------------------------------- checkpoints and restart
def test_restart_without_checkpoint_gives_full_ttl_and_keeps_keys(tmp_path: Path) -> None:
    e = Engine(LevelDBStorage(tmp_path / "db"))
    lid = grant(e, 30)
    put(e, b"k", lid)
    e2 = restart(e, 500.0)
    lease = e2.lessor.require(lid)
    assert lease.expiry == 500.0 + 30 + RESTART_EXTEND
    assert lease.keys == {b"k"}


def test_checkpoint_survives_restart_as_remaining_ttl() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 60)
    e.now = 20.0
    due = e.lessor.checkpoints_due(e.now, 5.0)
    assert due == [(lid, 40)]
    checkpoint(e, due)
    assert e.lessor.checkpoints_due(e.now, 5.0) == []
    e2 = restart(e, 1000.0)
    assert e2.lessor.require(lid).expiry == 1000.0 + 40 + RESTART_EXTEND
    assert e2.lessor.time_to_live(lid, 1000.0) == (41, 60)


def test_fresh_and_recently_renewed_leases_need_no_checkpoint() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 60)
    assert e.lessor.checkpoints_due(4.0, 5.0) == []
    e.lessor.renew(lid, 30.0)
    assert e.lessor.checkpoints_due(34.0, 5.0) == []
    assert e.lessor.checkpoints_due(35.5, 5.0) == [(lid, 55)]


def test_renewing_a_checkpointed_lease_requires_a_clear() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 60)
    checkpoint(e, e.lessor.checkpoints_due(30.0, 5.0))
    assert e.lessor.needs_clear(lid)
    e.lessor.renew(lid, 31.0)
    checkpoint(e, [(lid, 0)])  # what the keep-alive handler writes before it answers
    assert not e.lessor.needs_clear(lid)
    e2 = restart(e, 0.0)
    assert e2.lessor.require(lid).expiry == 60 + RESTART_EXTEND


def test_checkpoint_of_a_revoked_lease_is_skipped() -> None:
    e = Engine(MemoryStorage())
    lid = grant(e, 60)
    e.write(pb.LeaseRevokeRequest(ID=lid))
    checkpoint(e, [(lid, 10)])
    assert restart(e, 0.0).lessor.leases == {}


def test_shutdown_checkpoint_rounds_up_and_never_writes_zero() -> None:
    e = Engine(MemoryStorage())
    a, b = grant(e, 10), grant(e, 10)
    e.lessor.renew(b, 9.5)
    assert dict(e.lessor.checkpoints_all(9.6)) == {a: 1, b: 10}  # a: 0.4 s left -> 1
    assert checkpoint_value(-3.0) == 1 and checkpoint_value(2.01) == 3


def test_restart_spreads_deadlines_so_not_all_expire_at_once() -> None:
    storage = MemoryStorage()
    e = Engine(storage)
    ids = [grant(e, 10) for _ in range(50)]
    e2 = e.reopen()
    e2.lessor = Lessor(e2.store, revoke_rate=10)
    e2.lessor.load(100.0)
    first = 100.0 + 10 + RESTART_EXTEND
    deadlines = sorted(x.expiry for x in e2.lessor.leases.values())
    assert deadlines[0] >= first  # never earlier than the restart rule gives
    assert all(b - a >= 1.0 for a, b in zip(deadlines, deadlines[10:], strict=False))
    assert len(e2.lessor.expired(first)) == 10
    assert sorted(e2.lessor.expired(first + 4.0)) == sorted(ids)


def test_lease_records_are_crc_framed_when_crc_is_on(tmp_path: Path) -> None:
    e = Engine(LevelDBStorage(tmp_path / "db"), crc=True)
    lid = grant(e, 30)
    checkpoint(e, [(lid, 12)])
    e2 = restart(e, 0.0)
    assert e2.lessor.require(lid).checkpoint == 12


# ---------------------------------------------------------------- model
ops = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 30)),
        st.tuples(st.just("renew"), st.integers(0, 9)),
        st.tuples(st.just("advance"), st.floats(0.0, 12.0)),
        st.tuples(st.just("expire"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_expiry_matches_a_deadline_oracle(script: list[tuple[str, float]]) -> None:
    """Whatever the order of grants, renewals and clock steps, due == {deadline <= now}."""
    e = Engine(MemoryStorage())
    oracle: dict[int, float] = {}
    order: list[int] = []
    for op, arg in script:
        if op == "grant":
            lid = grant(e, int(arg))
            oracle[lid] = e.now + max(int(arg), 2)
            order.append(lid)
        elif op == "renew" and order:
            lid = order[int(arg) % len(order)]
            if lid in oracle:
                ttl = e.lessor.renew(lid, e.now)
                oracle[lid] = e.now + ttl
        elif op == "advance":
            e.now += arg
        else:
            due = e.lessor.expired(e.now)
            assert set(due) == {i for i, d in oracle.items() if d <= e.now}
            for lid in due:
                e.write(pb.LeaseRevokeRequest(ID=lid))
                del oracle[lid]
    assert set(e.lessor.leases) == set(oracle)
