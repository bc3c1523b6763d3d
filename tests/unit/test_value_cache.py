"""--value-cache-bytes: which newest values stay in memory, and that none is ever stale.

The model test (test_mvcc_model.py, SmallCacheMachine) checks every answer against an oracle
with a tiny budget; these pin the cases it reaches rarely: a load that fills the budget, CLOCK's
choice of what to drop, no values at all, and CRC on.
"""

from __future__ import annotations

from metastore_core.engine.ranges import range_at
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


def _get(e: Engine, key: bytes) -> bytes:
    r = range_at(e.store, pb.RangeRequest(key=key), e.store.committed_rev)
    return bytes(r.kvs[0].value)


def _held(e: Engine) -> set[bytes]:
    return {k for k, h in e.store.index.all() if h.newest is not None}


def test_a_load_that_fills_the_budget_keeps_no_older_value() -> None:
    """Load walks revisions in order: a's old value fits, the budget fills, then a's new value
    comes and does not fit. The old one must not stay behind as a's newest."""
    storage = MemoryStorage()
    e = Engine(storage)
    e.write(pb.PutRequest(key=b"a", value=b"old"))
    for k in (b"b", b"c", b"d"):
        e.write(pb.PutRequest(key=k, value=b"x" * 20))
    e.write(pb.PutRequest(key=b"a", value=b"new" * 20))
    one = len(e.store.index.get(b"b").newest or b"")
    e = Engine(storage, value_cache_bytes=3 * one)  # room for a's old value and b, c; not a's new one
    assert b"a" not in _held(e)
    assert e.store.values.bytes <= 3 * one
    assert _get(e, b"a") == b"new" * 20


def test_the_hand_spares_values_read_since_it_passed() -> None:
    e = Engine(MemoryStorage())
    e.write(pb.PutRequest(key=b"k00", value=b"v"))
    one = len(e.store.index.get(b"k00").newest or b"")
    e = Engine(MemoryStorage(), value_cache_bytes=5 * one)
    for i in range(20):  # each key in turn, while k07 is read between them
        e.write(pb.PutRequest(key=b"k%02d" % i, value=b"v"))
        if i >= 7:
            _get(e, b"k07")
    assert b"k07" in _held(e)
    assert len(_held(e)) <= 5
    assert e.store.values.evictions >= 14
    assert e.store.values.misses == 0  # k07 was never dropped: read each time the hand came


def test_a_value_not_read_again_is_dropped_first() -> None:
    e = Engine(MemoryStorage())
    e.write(pb.PutRequest(key=b"a", value=b"1"))
    one = len(e.store.index.get(b"a").newest or b"")
    e = Engine(MemoryStorage(), value_cache_bytes=3 * one)
    for k in (b"a", b"b", b"c"):
        e.write(pb.PutRequest(key=k, value=b"1"))
    e.write(pb.PutRequest(key=b"d", value=b"1"))  # every mark cleared, then a (oldest) dropped
    assert _held(e) == {b"b", b"c", b"d"}
    _get(e, b"c")
    e.write(pb.PutRequest(key=b"e", value=b"1"))  # b dropped; c was read: spared
    assert _held(e) == {b"c", b"d", b"e"}
    e.write(pb.DeleteRangeRequest(key=b"d"))  # a forgotten value leaves the ring when the hand meets it
    e.write(pb.PutRequest(key=b"f", value=b"1"))
    e.write(pb.PutRequest(key=b"g", value=b"1"))
    assert len(_held(e)) == 3 and b"d" not in _held(e)
    assert e.store.values.held == 3 and e.store.values.bytes == 3 * one


def test_no_budget_holds_nothing_and_reads_come_from_storage() -> None:
    e = Engine(MemoryStorage(), value_cache_bytes=0)
    e.write(pb.PutRequest(key=b"a", value=b"1"))
    e.write(pb.PutRequest(key=b"a", value=b"2"))
    assert _get(e, b"a") == b"2"
    assert _held(e) == set() and e.store.values.bytes == 0
    assert e.store.values.misses == 1
    assert _get(e.reopen(), b"a") == b"2"


def test_crc_holds_nothing_whatever_the_budget() -> None:
    e = Engine(MemoryStorage(), crc=True, value_cache_bytes=1 << 20)
    e.write(pb.PutRequest(key=b"a", value=b"1"))
    assert _get(e, b"a") == b"1"
    assert _held(e) == set()
