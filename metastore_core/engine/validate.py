"""Pure request checks done before anything is applied (etcd's v3rpc/key.go and more).

etcd checks shapes here and trusts enums; proto3 enums are open, so an
unknown sort_target reached etcd 3.4's sort and crashed it. We check every
enum and numeric field and refuse with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metastore_core import errors
from metastore_core.engine.keyrange import in_any
from metastore_core.pb.etcdserverpb.rpc_pb2 import (
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)


@dataclass(frozen=True)
class Limits:
    """Request limits (etcd's names where they exist)."""

    max_txn_ops: int = 128
    max_key_bytes: int = 1536
    max_value_bytes: int = 1 << 20
    max_request_bytes: int = 1536 * 1024  # etcd's default --max-request-bytes


def _bad(field: str, value: int, allowed: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"etcdserver: invalid {field} {value}: must be {allowed}")


def _check_enum(field: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise _bad(field, value, f"0..{top}")


def _check_key(key: bytes, limits: Limits) -> None:
    if not key:
        raise errors.EmptyKey()
    if len(key) > limits.max_key_bytes:
        raise errors.InvalidRequest(
            f"etcdserver: key is too large: {len(key)} bytes, limit {limits.max_key_bytes} (--max-key-bytes)"
        )


def check_range(r: RangeRequest, limits: Limits) -> None:
    _check_key(r.key, limits)
    _check_enum("sort_order", r.sort_order, 2)
    _check_enum("sort_target", r.sort_target, 4)
    for name in (
        "limit",
        "revision",
        "min_mod_revision",
        "max_mod_revision",
        "min_create_revision",
        "max_create_revision",
    ):
        v = getattr(r, name)
        if v < 0:
            raise _bad(name, v, ">= 0")


def check_put(r: PutRequest, limits: Limits) -> None:
    _check_key(r.key, limits)
    if r.ignore_value and r.value:
        raise errors.ValueProvided()
    if r.ignore_lease and r.lease:
        raise errors.LeaseProvided()
    if r.lease < 0:
        raise _bad("lease", r.lease, ">= 0")
    if len(r.value) > limits.max_value_bytes:
        raise errors.InvalidRequest(
            f"etcdserver: value is too large: {len(r.value)} bytes, "
            f"limit {limits.max_value_bytes} (--max-value-bytes)"
        )


def check_delete(r: DeleteRangeRequest, limits: Limits) -> None:
    _check_key(r.key, limits)


def check_compaction(r: CompactionRequest) -> None:
    if r.revision < 0:
        raise _bad("revision", r.revision, ">= 0")


def _check_compare(c: Compare, limits: Limits) -> None:
    _check_key(c.key, limits)
    _check_enum("compare result", c.result, 3)
    _check_enum("compare target", c.target, 4)


def _check_op(op: RequestOp, limits: Limits) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range(op.request_range, limits)
    elif kind == "request_put":
        check_put(op.request_put, limits)
    elif kind == "request_delete_range":
        check_delete(op.request_delete_range, limits)
    elif kind == "request_txn":
        _check_txn_shape(op.request_txn, limits)
    else:
        raise errors.KeyNotFound()  # an empty RequestOp, as etcd answers it


def _check_txn_shape(r: TxnRequest, limits: Limits) -> None:
    n = limits.max_txn_ops
    if len(r.compare) > n or len(r.success) > n or len(r.failure) > n:
        raise errors.TooManyOps()
    for c in r.compare:
        _check_compare(c, limits)
    for op in r.success:
        _check_op(op, limits)
    for op in r.failure:
        _check_op(op, limits)


def check_txn(r: TxnRequest, limits: Limits) -> None:
    """Shape, limits and etcd's duplicate-key rules for a (possibly nested) txn."""
    _check_txn_shape(r, limits)
    ops, compares = txn_work(r)
    if ops > limits.max_txn_ops or compares > limits.max_txn_ops:
        raise errors.TooManyOps()
    _check_intervals(r.success)
    _check_intervals(r.failure)


def txn_work(r: TxnRequest) -> tuple[int, int]:
    """(operations, compares) a txn can run, nested levels counted into the level holding them.

    etcd limits each level to --max-txn-ops, so 16 nested levels of 128 count-only ranges were
    one request of 2,048 scans; here the whole path that runs is held to the limit, which a
    txn without nesting meets exactly when etcd's rule does. Only one branch runs: the larger
    counts. A nested txn is one operation of its level plus its own."""

    def branch(ops: Sequence[RequestOp]) -> tuple[int, int]:
        n = c = 0
        for op in ops:
            n += 1
            if op.WhichOneof("request") == "request_txn":
                inner_ops, inner_compares = txn_work(op.request_txn)
                n += inner_ops
                c += inner_compares
        return n, c

    then_ops, then_compares = branch(r.success)
    else_ops, else_compares = branch(r.failure)
    return max(then_ops, else_ops), len(r.compare) + max(then_compares, else_compares)


def _check_intervals(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """etcd's checkIntervals: no key put twice, no put inside a delete, in one branch.

    A nested txn's success and failure branches exclude each other, so the
    same key may be put in both.
    """
    dels = [
        (op.request_delete_range.key, op.request_delete_range.range_end)
        for op in ops
        if op.WhichOneof("request") == "request_delete_range"
    ]
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or in_any(k, dels):
                raise errors.DuplicateKey()
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or in_any(k, dels):
                raise errors.DuplicateKey()
            puts.add(k)
        dels.extend(dels_then)
        dels.extend(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or in_any(k, dels):
            raise errors.DuplicateKey()
        puts.add(k)
    return puts, dels
