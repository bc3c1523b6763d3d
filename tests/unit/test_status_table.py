"""The one error table: every domain error maps to etcd's code, exact message and HTTP status."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from metastore_core import errors
from metastore_core.server.status import TABLE, Code, code_of, http_status

ROOT = Path(__file__).resolve().parents[2]

ROWS = [
    (errors.EmptyKey(), Code.INVALID_ARGUMENT, "etcdserver: key is not provided"),
    (errors.KeyNotFound(), Code.INVALID_ARGUMENT, "etcdserver: key not found"),
    (errors.ValueProvided(), Code.INVALID_ARGUMENT, "etcdserver: value is provided"),
    (errors.LeaseProvided(), Code.INVALID_ARGUMENT, "etcdserver: lease is provided"),
    (errors.TooManyOps(), Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"),
    (errors.DuplicateKey(), Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
    (errors.RequestTooLarge(), Code.INVALID_ARGUMENT, "etcdserver: request is too large"),
    (errors.Malformed(), Code.INVALID_ARGUMENT, "grpc: error unmarshalling request"),
    (errors.Compacted(), Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    (errors.FutureRevision(), Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"),
    (errors.LeaseTTLTooLarge(), Code.OUT_OF_RANGE, "etcdserver: too large lease TTL"),
    (errors.LeaseNotFound(), Code.NOT_FOUND, "etcdserver: requested lease not found"),
    (errors.LeaseExists(), Code.FAILED_PRECONDITION, "etcdserver: lease already exists"),
    (errors.NoSpace(), Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded"),
    (errors.Corrupt(), Code.DATA_LOSS, "etcdserver: corrupt cluster"),
    (errors.RequestTimeout(), Code.DEADLINE_EXCEEDED, "etcdserver: request timed out"),
    (errors.Stopping(), Code.UNAVAILABLE, "etcdserver: server stopped"),
    (errors.BadLeaderTransferee(), Code.FAILED_PRECONDITION, "etcdserver: bad leader transferee"),
    (errors.RecipeLeaseNotFound(), Code.UNKNOWN, "etcdserver: requested lease not found"),
    (errors.NoLeader(), Code.UNKNOWN, "election: no leader"),
    (errors.NotLeader(), Code.UNKNOWN, "election: not leader"),
    (errors.Internal(), Code.INTERNAL, "internal server error: panic recovered"),
]


@pytest.mark.parametrize(("exc", "code", "message"), ROWS)
def test_row(exc: errors.MetastoreError, code: Code, message: str) -> None:
    assert (code_of(exc), exc.text) == (code, message)


def test_refusals_that_name_their_limit() -> None:
    too_many = errors.TooManyRequests(7)
    assert code_of(too_many) is Code.RESOURCE_EXHAUSTED and "7 concurrent" in too_many.text
    assert "--max-concurrent-requests" in too_many.text
    memory = errors.MemoryLimit(1000)
    assert code_of(memory) is Code.RESOURCE_EXHAUSTED and "--max-memory" in memory.text
    failed = errors.StorageFailed(OSError("No space left on device"))
    assert code_of(failed) is Code.UNAVAILABLE
    assert failed.text.startswith("etcdserver: storage failed (No space left on device)")
    assert "etcdctl alarm disarm" in failed.text


def test_unmapped_is_internal() -> None:
    class Strange(errors.MetastoreError):
        message = "etcdserver: strange"

    assert code_of(Strange()) is Code.INTERNAL


def test_field_errors_keep_their_reason() -> None:
    exc = errors.InvalidRequest("etcdserver: invalid sort_target 99: must be 0..4")
    assert code_of(exc) is Code.INVALID_ARGUMENT and "sort_target 99" in exc.text


def test_http_statuses_follow_the_gateway() -> None:
    assert [http_status(c) for c in (Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION)] == [
        400,
        404,
        412,
    ]
    assert http_status(Code.RESOURCE_EXHAUSTED) == 429 and http_status(Code.UNAVAILABLE) == 503
    assert all(http_status(c) >= 200 for c in Code)


def _error_classes() -> list[type[errors.MetastoreError]]:
    return [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, errors.MetastoreError) and c is not errors.MetastoreError
    ]


def test_every_error_class_has_a_row() -> None:
    assert [c.__name__ for c in _error_classes() if c not in TABLE] == []


def test_every_error_class_is_raised_somewhere() -> None:
    """An error class nobody raises is dead weight in the wire contract."""
    raised: set[str] = set()
    for path in (ROOT / "metastore_core").rglob("*.py"):
        if "/pb/" in str(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(target, ast.Attribute):
                    raised.add(target.attr)
                elif isinstance(target, ast.Name):
                    raised.add(target.id)
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
                func = node.value.func
                named = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                if named and func.value.id == "errors":  # type: ignore[union-attr]
                    raised.add(func.attr)  # type: ignore[union-attr]  # built here, raised by the caller
    assert sorted(c.__name__ for c in _error_classes() if c.__name__ not in raised) == []
