"""Reads in steps (engine/reads.py) answer exactly as reads in one go, and stay within bounds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metastore_core import errors
from metastore_core.engine import reads, wire
from metastore_core.engine.ranges import range_at
from metastore_core.engine.validate import Limits, check_range, check_txn
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine

KEYS = [b"a", b"b", b"b1", b"c", b"d", b"e", b"f"]
NO_LIMIT = 1 << 40


@pytest.fixture(autouse=True)
def tiny_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Steps of 2 keys and sorted runs of 3 items, so every chunk boundary is crossed."""
    monkeypatch.setattr(reads, "STEP", 2)
    monkeypatch.setattr(reads, "SORT_STEP", 3)
    yield


def _engine(ops: list[tuple[bytes, bytes | None]], **store_options: int | bool) -> Engine:
    e = Engine(MemoryStorage(), **store_options)
    for key, value in ops:
        if value is None:
            e.write(pb.DeleteRangeRequest(key=key))
        else:
            e.write(pb.PutRequest(key=key, value=value))
    return e


def _range_reply(e: Engine, req: pb.RangeRequest, rev: int, max_bytes: int = NO_LIMIT) -> pb.RangeResponse:
    body = reads.run(reads.range_steps(e.store, req, rev, max_bytes))
    return pb.RangeResponse.FromString(b"".join(body.parts))


writes = st.lists(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(min_size=1, max_size=4))), max_size=25
)
ranges = st.builds(
    pb.RangeRequest,
    key=st.sampled_from([b"a", b"b", b"\0", b"c"]),
    range_end=st.sampled_from([b"\0", b"c", b"z", b"b1"]),
    limit=st.integers(0, 4),
    sort_order=st.integers(0, 2),
    sort_target=st.integers(0, 4),
    keys_only=st.booleans(),
    count_only=st.booleans(),
    min_mod_revision=st.sampled_from([0, 0, 3, 8]),
    max_mod_revision=st.sampled_from([0, 0, 6, 20]),
    min_create_revision=st.sampled_from([0, 0, 2, 5]),
    max_create_revision=st.sampled_from([0, 0, 9]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=writes, req=ranges, back=st.integers(0, 10))
def test_range_in_steps_equals_range_at_every_revision(
    ops: list[tuple[bytes, bytes | None]], req: pb.RangeRequest, back: int
) -> None:
    e = _engine(ops)
    rev = max(e.store.committed_rev - back, 1)
    want = range_at(e.store, req, rev)
    got = _range_reply(e, req, rev)
    # equal sort keys keep the key order in both (etcd's own sort leaves ties in any order)
    assert got == want


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=writes, req=ranges, back=st.integers(0, 10), budget=st.sampled_from([0, 8, 40]))
def test_a_range_in_steps_under_a_value_budget_reads_what_is_not_held(
    ops: list[tuple[bytes, bytes | None]], req: pb.RangeRequest, back: int, budget: int
) -> None:
    # the reference holds nothing in memory: with CRC on every value is read and checked from storage
    stored, bounded = _engine(ops, crc=True), _engine(ops, value_cache_bytes=budget)
    rev = max(stored.store.committed_rev - back, 1)
    assert _range_reply(bounded, req, rev) == _range_reply(stored, req, rev)
    assert bounded.store.values.bytes <= budget


txn_ops = st.lists(
    st.builds(
        lambda key, end, count: pb.RequestOp(
            request_range=pb.RangeRequest(key=key, range_end=end, count_only=count)
        ),
        st.sampled_from([b"a", b"b", b"\0"]),
        st.sampled_from([b"", b"\0", b"c"]),
        st.booleans(),
    ),
    max_size=4,
)
compares = st.lists(
    st.builds(
        lambda key, end, v: pb.Compare(key=key, range_end=end, target=pb.Compare.VERSION, version=v),
        st.sampled_from(KEYS),
        st.sampled_from([b"", b"\0"]),
        st.integers(0, 2),
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=writes, cmp=compares, then=txn_ops, otherwise=txn_ops, nested=st.booleans())
def test_read_only_txn_in_steps_equals_the_apply_path(
    ops: list[tuple[bytes, bytes | None]],
    cmp: list[pb.Compare],
    then: list[pb.RequestOp],
    otherwise: list[pb.RequestOp],
    nested: bool,
) -> None:
    e = _engine(ops)
    r = pb.TxnRequest(compare=cmp, success=then, failure=otherwise)
    if nested:
        r.success.add().request_txn.CopyFrom(pb.TxnRequest(compare=cmp, success=then, failure=otherwise))
    check_txn(r, Limits())
    rev = e.store.committed_rev
    body = reads.run(reads.txn_steps(e.store, r, rev, NO_LIMIT))
    got = pb.TxnResponse.FromString(b"".join(body.parts))
    want = e.write(r)
    want.ClearField("header")
    assert got == want


def test_reply_over_the_limit_is_refused_while_it_is_built() -> None:
    e = _engine([(b"k%03d" % i, b"v" * 100) for i in range(50)])
    req = pb.RangeRequest(key=b"k", range_end=b"l")
    check_range(req, Limits())
    rev = e.store.committed_rev
    steps = reads.range_steps(e.store, req, rev, 1000)
    with pytest.raises(errors.ResponseTooLarge) as exc:
        reads.run(steps)
    assert "1000 bytes" in exc.value.text and "--max-response-bytes" in exc.value.text
    # the same request with a limit fits; count_only and keys_only fit too
    assert len(_range_reply(e, pb.RangeRequest(key=b"k", range_end=b"l", limit=5), rev, 1000).kvs) == 5
    assert _range_reply(e, pb.RangeRequest(key=b"k", range_end=b"l", count_only=True), rev, 1000).count == 50
    # sorted: refused before every item is built, not after
    sort = pb.RangeRequest(key=b"k", range_end=b"l", sort_target=pb.RangeRequest.MOD)
    with pytest.raises(errors.ResponseTooLarge):
        reads.run(reads.range_steps(e.store, sort, rev, 1000))


def test_a_read_in_steps_yields_every_step_and_holds_its_revision() -> None:
    e = _engine([(b"k%02d" % i, b"v") for i in range(20)])
    rev = e.store.committed_rev
    steps = reads.range_steps(e.store, pb.RangeRequest(key=b"k", range_end=b"l"), rev, NO_LIMIT)
    next(steps)  # one step done; writes land before the next one
    e.write(pb.PutRequest(key=b"k00", value=b"new"))
    e.write(pb.DeleteRangeRequest(key=b"k10", range_end=b"k20"))
    e.write(pb.PutRequest(key=b"k055", value=b"added"))
    yields = 1
    while True:
        try:
            next(steps)
            yields += 1
        except StopIteration as stop:
            body = stop.value
            break
    assert yields >= 9  # 20 keys, 2 a step
    got = pb.RangeResponse.FromString(b"".join(body.parts))
    assert got.count == 20 and [kv.key for kv in got.kvs] == [b"k%02d" % i for i in range(20)]
    assert all(kv.value == b"v" for kv in got.kvs)  # as of rev: none of the later writes


def test_compaction_waits_for_a_pinned_read() -> None:
    e = _engine([(b"k", b"v%d" % i) for i in range(5)])
    store = e.store
    store.incremental_compaction = True
    with store.pinned(3):
        e.write(pb.CompactionRequest(revision=5))
        assert store.compact_step() == 0 and store.compact_pending  # held for the read at 3
        assert store.kv(store.index.get(b"k").at(3), store.index.get(b"k")).value == b"v1"  # type: ignore[arg-type]
    assert store.compact_step() > 0  # unpinned: it goes on


def test_wire_frames_match_the_protobuf_encoding() -> None:
    for n in (0, 1, 127, 128, 300, 1 << 40, -1):
        body = wire.Body()
        body.add(wire.scalar(wire.RANGE_COUNT, n))
        assert b"".join(body.parts) == pb.RangeResponse(count=n).SerializeToString()
    kv = KeyValue(key=b"k" * 200, value=b"v" * 300, mod_revision=7)
    body = wire.Body()
    body.add_field(wire.RANGE_KVS, kv.SerializeToString())
    assert b"".join(body.parts) == pb.RangeResponse(kvs=[kv]).SerializeToString()
