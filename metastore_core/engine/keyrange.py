"""etcd's key-range rule, in one place, and the walker of the keys a command touches.

A range is (key, end), as every etcd request spells it:
    end b""     the single key `key`
    end b"\\0"   every key >= key (key b"\\0" with end b"\\0" is the whole keyspace)
    otherwise   the half-open interval [key, end)
mvcc/index.py walks its sorted keys by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

READ = "read"
WRITE = "write"


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """Is key inside the range (start, end)?"""
    if not end:
        return key == start
    if end == b"\0":
        return key >= start
    return start <= key < end


def in_any(key: bytes, ranges: list[tuple[bytes, bytes]]) -> bool:
    """Is key inside any of the ranges?"""
    return any(in_range(key, start, end) for start, end in ranges)


@dataclass(frozen=True, slots=True)
class Access:
    """One read or write a command may do, over a key range."""

    kind: str  # READ or WRITE
    key: bytes
    end: bytes = b""


def accesses(command: Any) -> Iterator[Access]:
    """Every key range command reads or writes, both branches of every (nested) txn included.

    A put or delete with prev_kv also reads what it replaces. Lease revocation touches the
    keys attached to the lease, which only the store knows; it yields nothing here.
    """
    if isinstance(command, pb.RangeRequest):
        yield Access(READ, command.key, command.range_end)
    elif isinstance(command, pb.PutRequest):
        yield Access(WRITE, command.key)
        if command.prev_kv:
            yield Access(READ, command.key)
    elif isinstance(command, pb.DeleteRangeRequest):
        yield Access(WRITE, command.key, command.range_end)
        if command.prev_kv:
            yield Access(READ, command.key, command.range_end)
    elif isinstance(command, pb.TxnRequest):
        for c in command.compare:
            yield Access(READ, c.key, c.range_end)
        for op in (*command.success, *command.failure):
            kind = op.WhichOneof("request")
            if kind is not None:
                yield from accesses(getattr(op, kind))


def leases(command: Any) -> Iterator[int]:
    """The lease of every put in command that attaches one, nested txns included."""
    if isinstance(command, pb.PutRequest):
        if command.lease:
            yield command.lease
    elif isinstance(command, pb.TxnRequest):
        for op in (*command.success, *command.failure):
            kind = op.WhichOneof("request")
            if kind is not None:
                yield from leases(getattr(op, kind))


def writes(command: Any) -> bool:
    """Can command change keys? (A txn that only compares and reads cannot.)

    What accesses() would say (a WRITE anywhere), without building its Access objects: every
    Txn asks this before it goes to the read or the write path."""
    if isinstance(command, pb.TxnRequest):
        for op in (*command.success, *command.failure):
            kind = op.WhichOneof("request")
            if kind == "request_put" or kind == "request_delete_range":
                return True
            if kind == "request_txn" and writes(op.request_txn):
                return True
        return False
    return isinstance(command, pb.PutRequest | pb.DeleteRangeRequest)
