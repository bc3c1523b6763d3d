"""The one error table: every engine error maps to etcd's code and exact message."""

from __future__ import annotations

import grpc
import pytest

from metastore_core import errors
from metastore_core.server.status import to_status

ROWS = [
    (errors.EmptyKey, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    (errors.KeyNotFound, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found"),
    (errors.ValueProvided, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: value is provided"),
    (errors.LeaseProvided, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: lease is provided"),
    (errors.TooManyOps, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    (errors.DuplicateKey, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    (errors.RequestTooLarge, grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large"),
    (
        errors.Compacted,
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision has been compacted",
    ),
    (
        errors.FutureRevision,
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    ),
    (errors.LeaseTTLTooLarge, grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
    (errors.LeaseNotFound, grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (errors.LeaseExists, grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    (errors.NoSpace, grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    (errors.TooManyRequests, grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
    (errors.Corrupt, grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster"),
    (errors.MemberNotFound, grpc.StatusCode.NOT_FOUND, "etcdserver: member not found"),
    (errors.BadLeaderTransferee, grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee"),
]


@pytest.mark.parametrize(("cls", "code", "message"), ROWS)
def test_row(cls: type[errors.MetastoreError], code: grpc.StatusCode, message: str) -> None:
    assert to_status(cls()) == (code, message)


def test_unmapped_is_internal() -> None:
    class Strange(errors.MetastoreError):
        message = "etcdserver: strange"

    assert to_status(Strange()) == (grpc.StatusCode.INTERNAL, "etcdserver: strange")


def test_field_errors_keep_their_reason() -> None:
    code, msg = to_status(errors.InvalidRequest("etcdserver: invalid sort_target 99: must be 0..4"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sort_target 99" in msg
