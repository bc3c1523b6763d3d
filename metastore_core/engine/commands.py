"""Facts about write commands that the write gate needs before proposing them (pure)."""

from __future__ import annotations

from typing import Any

from metastore_core.engine.keyrange import writes
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

KV_OVERHEAD = 64  # bytes a stored revision costs beyond its key and value (key, framing, index)
LEASE_OVERHEAD = 64


def _put_cost(r: pb.PutRequest) -> int:
    return len(r.key) + len(r.value) + KV_OVERHEAD


def _txn_cost(r: pb.TxnRequest) -> int:
    def branch(ops: Any) -> int:
        total = 0
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                total += _put_cost(op.request_put)
            elif kind == "request_txn":
                total += _txn_cost(op.request_txn)
        return total

    return max(branch(r.success), branch(r.failure))  # only one branch runs


def cost(command: Any) -> int:
    """Bytes a write command may add to the backend; 0 for commands that only remove."""
    if isinstance(command, pb.PutRequest):
        return _put_cost(command)
    if isinstance(command, pb.TxnRequest):
        return _txn_cost(command)
    if isinstance(command, pb.LeaseGrantRequest):
        return LEASE_OVERHEAD
    return 0


def mutates(command: Any) -> bool:
    """False only for a Txn that can do nothing but compare and read."""
    if isinstance(command, pb.TxnRequest):
        return writes(command)
    return True
