"""Request checks: etcd's shape rules and our range checks on every enum and number."""

from __future__ import annotations

import pytest

from metastore_core import errors
from metastore_core.engine import validate as v
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

L = v.Limits()


def put(k: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"v"))


def delete(k: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k, range_end=end))


def txn(success: list[pb.RequestOp], failure: list[pb.RequestOp] | None = None) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(success=success, failure=failure or []))


@pytest.mark.parametrize(
    "ops",
    [
        [put(b"a"), put(b"a")],
        [delete(b"a", b"c"), put(b"b")],
        [delete(b"a", b"\0"), put(b"zz")],
        [put(b"a"), txn([put(b"a")])],
        [delete(b"a"), txn([put(b"a")])],
        [txn([put(b"a")]), txn([put(b"a")])],
    ],
)
def test_duplicate_keys_in_one_branch_refused(ops: list[pb.RequestOp]) -> None:
    with pytest.raises(errors.DuplicateKey):
        v.check_txn(pb.TxnRequest(success=ops), L)


@pytest.mark.parametrize(
    "ops",
    [
        [put(b"a"), put(b"b")],
        [delete(b"a", b"b"), put(b"b")],  # range end is exclusive
        [txn([put(b"a")], [put(b"a")])],  # then/else exclude each other
    ],
)
def test_allowed_shapes(ops: list[pb.RequestOp]) -> None:
    v.check_txn(pb.TxnRequest(success=ops), L)


def test_same_key_in_success_and_failure_is_fine() -> None:
    v.check_txn(pb.TxnRequest(success=[put(b"a")], failure=[put(b"a")]), L)


def test_too_many_ops() -> None:
    v.check_txn(pb.TxnRequest(success=[put(b"k%d" % i) for i in range(128)]), L)
    with pytest.raises(errors.TooManyOps):
        v.check_txn(pb.TxnRequest(success=[put(b"k%d" % i) for i in range(129)]), L)


def _count(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, range_end=b"\0", count_only=True))


def _cmp(key: bytes) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.VERSION, version=0)


def test_nested_levels_count_toward_the_op_limit() -> None:
    # issue 13: 16 levels of 128 count-only ranges each passed etcd's per-level rule
    level = pb.TxnRequest(success=[_count(b"k%d" % i) for i in range(127)])
    for _ in range(15):
        outer = pb.TxnRequest(success=[_count(b"k%d" % i) for i in range(127)])
        outer.success.add().request_txn.CopyFrom(level)
        level = outer
    v._check_txn_shape(level, L)  # every level is within etcd's per-level rule
    with pytest.raises(errors.TooManyOps) as exc:
        v.check_txn(level, L)
    assert exc.value.text == "etcdserver: too many operations in txn request"  # etcd's exact string
    # a nested txn is one op of its level plus its own: 1 + 127 fits, 1 + 128 does not
    v.check_txn(pb.TxnRequest(success=[txn([_count(b"k%d" % i) for i in range(127)], [])]), L)
    with pytest.raises(errors.TooManyOps):
        v.check_txn(pb.TxnRequest(success=[txn([_count(b"k%d" % i) for i in range(128)], [])]), L)
    # only one branch runs: each may hold the limit
    v.check_txn(pb.TxnRequest(success=[_count(b"a")] * 128, failure=[txn([_count(b"b")] * 127, [])]), L)


def test_nested_compares_count_toward_the_limit() -> None:
    nested = pb.TxnRequest(compare=[_cmp(b"k%d" % i) for i in range(64)])
    ok = pb.TxnRequest(compare=[_cmp(b"c%d" % i) for i in range(64)])
    ok.success.add().request_txn.CopyFrom(nested)
    v.check_txn(ok, L)  # 64 + 64
    nested.compare.append(_cmp(b"one-more"))
    bad = pb.TxnRequest(compare=[_cmp(b"c%d" % i) for i in range(64)])
    bad.success.add().request_txn.CopyFrom(nested)
    with pytest.raises(errors.TooManyOps):
        v.check_txn(bad, L)
    assert v.txn_work(bad) == (1, 129)


def test_empty_request_op_is_key_not_found() -> None:
    with pytest.raises(errors.KeyNotFound):
        v.check_txn(pb.TxnRequest(success=[pb.RequestOp()]), L)


@pytest.mark.parametrize(
    "req",
    [
        pb.RangeRequest(key=b"a", sort_target=99),  # type: ignore[arg-type]
        pb.RangeRequest(key=b"a", sort_order=3),  # type: ignore[arg-type]
        pb.RangeRequest(key=b"a", limit=-1),
        pb.RangeRequest(key=b"a", revision=-1),
        pb.RangeRequest(key=b"a", min_mod_revision=-5),
    ],
)
def test_out_of_range_fields_are_invalid(req: pb.RangeRequest) -> None:
    with pytest.raises(errors.InvalidRequest) as exc:
        v.check_range(req, L)
    assert "etcdserver: invalid" in exc.value.text


def test_compare_enums_checked() -> None:
    bad = pb.Compare(key=b"a", result=7)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidRequest, match="compare result"):
        v.check_txn(pb.TxnRequest(compare=[bad]), L)


def test_put_rules() -> None:
    with pytest.raises(errors.EmptyKey):
        v.check_put(pb.PutRequest(), L)
    with pytest.raises(errors.ValueProvided):
        v.check_put(pb.PutRequest(key=b"a", value=b"x", ignore_value=True), L)
    with pytest.raises(errors.LeaseProvided):
        v.check_put(pb.PutRequest(key=b"a", lease=5, ignore_lease=True), L)
    with pytest.raises(errors.InvalidRequest, match="key is too large"):
        v.check_put(pb.PutRequest(key=b"k" * 1537), L)
    with pytest.raises(errors.InvalidRequest, match="value is too large"):
        v.check_put(pb.PutRequest(key=b"k", value=b"v" * ((1 << 20) + 1)), L)
