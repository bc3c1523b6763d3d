"""The one apply path: every write command comes in here, in a log entry, and a response goes out.

Commands are etcd's own request messages, as etcd's raft log carries them
(engine/entry.py). Each entry either applies fully or raises before changing
anything: all checks run against the state before the first change. Apply is
deterministic: the same entries applied in the same order leave the same
bytes in storage on any member (nothing random, no clock in replicated
state; tests/unit/test_determinism.py). The one clock read sets a granted
lease's deadline, which is member-local, never stored: only the leader
expires leases, and a new leader resets every deadline.
The caller (member/single.py) makes the staged writes durable before it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine import reads
from metastore_core.engine.alarms import Alarms
from metastore_core.engine.auth import AuthStore
from metastore_core.engine.entry import Entry
from metastore_core.engine.lease import Lessor
from metastore_core.engine.ranges import range_at
from metastore_core.engine.reads import Steps, compare_steps, live_chunks, range_steps, run
from metastore_core.mvcc.index import KeyHistory
from metastore_core.mvcc.store import MVCCStore, WriteTxn
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

NO_LIMIT = 1 << 62  # a write txn's reads are not cut half-way (it is applied whole or not at all)


class OpCounts:
    """etcd's etcd_mvcc_{range,put,delete,txn}_total: every range, put and delete applied, in
    a Txn or alone; a txn counts when it ran more than one of them (mvcc/metrics_txn.go)."""

    __slots__ = ("deletes", "puts", "ranges", "txns")

    def __init__(self) -> None:
        self.ranges = self.puts = self.deletes = self.txns = 0

    @property
    def total(self) -> int:
        return self.ranges + self.puts + self.deletes


class Applier:
    """Applies write commands to the store, the lessor, the alarms and the auth store."""

    def __init__(
        self,
        store: MVCCStore,
        lessor: Lessor,
        alarms: Alarms,
        clock: Callable[[], float],
        auth: AuthStore | None = None,
    ) -> None:
        self.store = store
        self.lessor = lessor
        self.alarms = alarms
        self.clock = clock
        self.ops = OpCounts()
        self.auth = auth if auth is not None else AuthStore(store, lessor.keys_of)
        self._dispatch: dict[type, Callable[[Any], Any]] = {
            pb.PutRequest: self.put,
            pb.DeleteRangeRequest: self.delete_range,
            pb.TxnRequest: self.txn,
            pb.CompactionRequest: self.compact,
            pb.LeaseGrantRequest: self.lease_grant,
            pb.LeaseRevokeRequest: self.lease_revoke,
            pb.LeaseCheckpointRequest: self.lease_checkpoint,
            pb.AlarmRequest: self.alarm,
            **self.auth.handlers(),
        }
        self._steps: dict[type, Callable[[Any], Steps[Any]]] = {
            pb.DeleteRangeRequest: self.delete_range_steps,
            pb.TxnRequest: self.txn_steps,
            pb.LeaseRevokeRequest: self.lease_revoke_steps,
        }

    def apply_steps(self, entry: Entry) -> Steps[Any]:
        """apply(), yielding between chunks of a long command's work (member/single.py drives it
        holding every other change to the store back, so the steps are one atomic apply)."""
        steps = self._steps.get(type(entry.command))
        if steps is None:
            return self.apply(entry)
        self.store.consistent_index = entry.index
        self.auth.check_entry(entry.auth, entry.command)
        return (yield from steps(entry.command))

    def apply(self, entry: Entry) -> Any:
        """Apply one entry; returns its command's response (header revision set).

        The entry's index becomes the consistent index even when a check refuses the
        command, so every member that applies the same log counts the same. Permissions are
        checked here, against the auth state this entry meets (engine/auth.py).
        """
        handler = self._dispatch[type(entry.command)]
        self.store.consistent_index = entry.index
        self.auth.check_entry(entry.auth, entry.command)
        return handler(entry.command)

    # ------------------------------------------------------------------ put
    def _check_put(self, r: pb.PutRequest) -> None:
        if r.lease and self.lessor.get(r.lease) is None:
            raise errors.LeaseNotFound()
        if r.ignore_value or r.ignore_lease:
            h = self.store.index.get(r.key)
            if h is None or not h.alive:
                raise errors.KeyNotFound()

    def put(self, r: pb.PutRequest) -> pb.PutResponse:
        self._check_put(r)
        txn = self.store.begin()
        resp = self._put(txn, r)
        self.ops.puts += 1
        return resp

    def _put(self, txn: WriteTxn, r: pb.PutRequest) -> pb.PutResponse:
        s = self.store
        resp = pb.PutResponse()
        h = s.index.get(r.key)
        alive = h is not None and h.alive
        old_lease = h.lease if h is not None and alive else 0
        value, lease = r.value, r.lease
        if alive and (r.prev_kv or r.ignore_value):
            assert h is not None
            prev = s.kv(h.entries[-1], h)
            if r.prev_kv:
                resp.prev_kv.CopyFrom(prev)
            if r.ignore_value:
                value = prev.value
        if r.ignore_lease:
            lease = old_lease
        txn.put(r.key, value, lease)
        if old_lease != lease:
            if old_lease:
                self.lessor.detach(old_lease, r.key)
            if lease:
                self.lessor.attach(lease, r.key)
        resp.header.revision = txn.rev
        return resp

    # ------------------------------------------------------------------ delete
    def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return run(self.delete_range_steps(r))

    def delete_range_steps(self, r: pb.DeleteRangeRequest) -> Steps[pb.DeleteRangeResponse]:
        txn = self.store.begin()
        resp = yield from self._delete(txn, r)
        self.ops.deletes += 1
        return resp

    def _delete(self, txn: WriteTxn, r: pb.DeleteRangeRequest) -> Steps[pb.DeleteRangeResponse]:
        s = self.store
        resp = pb.DeleteRangeResponse()
        doomed: list[tuple[bytes, int, KeyHistory]] = []
        for live in live_chunks(s, r.key, r.range_end, s.applied_rev):  # alive now: newest entry
            doomed.extend(live)
            yield
        for i, (k, _, h) in enumerate(doomed, 1):
            if r.prev_kv:
                resp.prev_kvs.append(s.kv(h.entries[-1], h))
            if h.lease:
                self.lessor.detach(h.lease, k)
            txn.delete(k, h)
            if i % reads.STEP == 0:
                yield
        resp.deleted = len(doomed)
        resp.header.revision = txn.rev if txn.changed else s.applied_rev
        return resp

    # ------------------------------------------------------------------ txn
    def _path(self, r: pb.TxnRequest, path: list[bool]) -> Steps[None]:
        ok = True
        for c in r.compare:
            if not (yield from compare_steps(self.store, c, self.store.applied_rev)):
                ok = False
                break
        path.append(ok)
        for op in r.success if ok else r.failure:
            if op.WhichOneof("request") == "request_txn":
                yield from self._path(op.request_txn, path)

    def _check_ops(self, r: pb.TxnRequest, path: list[bool], i: int) -> int:
        ops = r.success if path[i] else r.failure
        i += 1
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                self._check_put(op.request_put)
            elif kind == "request_range":
                if op.request_range.revision > 0:
                    rev = op.request_range.revision
                    if rev > self.store.applied_rev:
                        raise errors.FutureRevision()
                    if rev < self.store.compact_rev:
                        raise errors.Compacted()
            elif kind == "request_txn":
                i = self._check_ops(op.request_txn, path, i)
        return i

    def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        return run(self.txn_steps(r))

    def txn_steps(self, r: pb.TxnRequest) -> Steps[pb.TxnResponse]:
        path: list[bool] = []
        yield from self._path(r, path)
        self._check_ops(r, path, 0)
        txn = self.store.begin()
        resp = pb.TxnResponse()
        before = self.ops.total
        yield from self._run_txn(txn, r, path, 0, resp)
        if self.ops.total - before > 1:
            self.ops.txns += 1
        resp.header.revision = txn.rev if txn.changed else self.store.applied_rev
        return resp

    def _run_txn(
        self, txn: WriteTxn, r: pb.TxnRequest, path: list[bool], i: int, resp: pb.TxnResponse
    ) -> Steps[int]:
        ok = path[i]
        i += 1
        resp.succeeded = ok
        s = self.store
        for op in r.success if ok else r.failure:
            out = resp.responses.add()
            kind = op.WhichOneof("request")
            if kind == "request_range":
                rr = op.request_range
                cur = txn.rev if txn.changed else s.applied_rev
                at = rr.revision if rr.revision > 0 else cur
                res = out.response_range
                if s.index.span(rr.key, rr.range_end) <= reads.STEP:
                    res.CopyFrom(range_at(s, rr, at))
                else:  # a long one in steps; a write txn's reply is checked once it is durable
                    body = yield from range_steps(s, rr, at, NO_LIMIT)
                    for part in body.parts:
                        res.MergeFromString(part)
                        yield
                res.header.revision = cur
                self.ops.ranges += 1
            elif kind == "request_put":
                out.response_put.CopyFrom(self._put(txn, op.request_put))
                self.ops.puts += 1
            elif kind == "request_delete_range":
                out.response_delete_range.CopyFrom((yield from self._delete(txn, op.request_delete_range)))
                self.ops.deletes += 1
            else:
                inner = out.response_txn
                inner.header.SetInParent()
                i = yield from self._run_txn(txn, op.request_txn, path, i, inner)
        return i

    def work(self, command: Any) -> int:
        """About how many keys applying command walks, in O(log n): a long one goes in steps."""
        t = type(command)
        index = self.store.index
        if t is pb.DeleteRangeRequest:
            return index.span(command.key, command.range_end)
        if t is pb.TxnRequest:
            n = sum(index.span(c.key, c.range_end) for c in command.compare)
            for op in (*command.success, *command.failure):
                kind = op.WhichOneof("request")
                if kind == "request_range" or kind == "request_delete_range":
                    inner = getattr(op, kind)
                    n += index.span(inner.key, inner.range_end)
                elif kind == "request_txn":
                    n += self.work(op.request_txn)
                else:
                    n += 1
            return n
        if t is pb.LeaseRevokeRequest:
            lease = self.lessor.get(command.ID)
            return len(lease.keys) if lease is not None else 0
        return 1

    # ------------------------------------------------------------------ compact
    def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        self.store.compact(r.revision)
        resp = pb.CompactionResponse()
        resp.header.revision = self.store.applied_rev
        return resp

    # ------------------------------------------------------------------ lease
    def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if r.ID == 0:  # a bug in the proposer, not a client mistake: IDs are chosen before proposing
            raise ValueError("a lease grant reached apply without an ID")
        lease = self.lessor.grant(r.ID, r.TTL, self.clock())
        resp = pb.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
        resp.header.revision = self.store.applied_rev
        return resp

    def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return run(self.lease_revoke_steps(r))

    def lease_revoke_steps(self, r: pb.LeaseRevokeRequest) -> Steps[pb.LeaseRevokeResponse]:
        lease = self.lessor.remove(r.ID)
        txn = self.store.begin()
        for i, key in enumerate(sorted(lease.keys), 1):
            h = self.store.index.get(key)
            if h is not None and h.alive and h.lease == r.ID:
                txn.delete(key, h)
            if i % reads.STEP == 0:
                yield
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = txn.rev if txn.changed else self.store.applied_rev
        return resp

    def lease_checkpoint(self, r: pb.LeaseCheckpointRequest) -> pb.LeaseCheckpointResponse:
        """Record remaining TTLs (0 clears one); leases revoked meanwhile are skipped."""
        for cp in r.checkpoints:
            self.lessor.set_checkpoint(cp.ID, cp.remaining_TTL)
        resp = pb.LeaseCheckpointResponse()
        resp.header.revision = self.store.applied_rev
        return resp

    # ------------------------------------------------------------------ alarms
    def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        """Raise or clear one alarm (GET never reaches apply: it changes nothing)."""
        if r.action == pb.AlarmRequest.ACTIVATE:
            self.alarms.activate(r.memberID, r.alarm)
        elif r.action == pb.AlarmRequest.DEACTIVATE:
            self.alarms.deactivate(r.memberID, r.alarm)
        else:
            raise errors.InvalidRequest(f"etcdserver: invalid alarm action {r.action}")
        return pb.AlarmResponse()
