"""The MVCC engine against a simple model: a dict of key histories.

Hypothesis drives put/delete/txn/compact/restart and checks every read at
every revision still readable, including count and the per-key revisions.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metastore_core import errors
from metastore_core.engine.ranges import range_at
from metastore_core.mvcc.index import entry_main, entry_sub, is_tombstone
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage.layout import rev_key
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine, index_state

KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])
VALUES = st.binary(min_size=0, max_size=3)

# model: key -> list of (rev, value or None for delete)
History = dict[bytes, list[tuple[int, bytes | None]]]


def model_state(h: History, rev: int) -> dict[bytes, tuple[bytes, int, int, int]]:
    """key -> (value, create, mod, version) as of rev."""
    out = {}
    for key, events in h.items():
        create = version = 0
        state = None
        for r, value in events:
            if r > rev:
                break
            if value is None:
                create = version = 0
                state = None
            else:
                if version == 0:
                    create = r
                version += 1
                state = (value, create, r, version)
        if state is not None:
            out[key] = state
    return out


class MVCCMachine(RuleBasedStateMachine):
    VALUE_BUDGET: int | None = None  # --value-cache-bytes; None holds every newest value

    def __init__(self) -> None:
        super().__init__()
        self.storage = MemoryStorage()
        self.engine = Engine(self.storage, value_cache_bytes=self.VALUE_BUDGET)
        self.history: History = {}
        self.rev = 1
        self.compacted = 0

    def _record(self, key: bytes, value: bytes | None, rev: int) -> None:
        self.history.setdefault(key, []).append((rev, value))

    def _alive(self, key: bytes) -> bool:
        return key in model_state(self.history, self.rev)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        resp = self.engine.write(pb.PutRequest(key=key, value=value, prev_kv=True))
        prev = model_state(self.history, self.rev).get(key)
        self.rev += 1
        self._record(key, value, self.rev)
        assert resp.header.revision == self.rev
        assert resp.HasField("prev_kv") == (prev is not None)
        if prev is not None:
            assert resp.prev_kv.value == prev[0]

    @rule(key=KEYS, end=st.sampled_from([b"", b"c", b"\0"]))
    def delete(self, key: bytes, end: bytes) -> None:
        if end and end != b"\0" and end <= key:
            end = b""
        state = model_state(self.history, self.rev)
        doomed = [
            k for k in sorted(state) if (k == key if not end else (k >= key and (end == b"\0" or k < end)))
        ]
        resp = self.engine.write(pb.DeleteRangeRequest(key=key, range_end=end))
        assert resp.deleted == len(doomed)
        if doomed:
            self.rev += 1
            for k in doomed:
                self._record(k, None, self.rev)
        assert resp.header.revision == self.rev

    @rule(key=KEYS, expect=VALUES, a=KEYS, b=KEYS, value=VALUES)
    def txn(self, key: bytes, expect: bytes, a: bytes, b: bytes, value: bytes) -> None:
        state = model_state(self.history, self.rev)
        ok = key in state and state[key][0] == expect
        req = pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=expect)],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=a, value=value)),
                pb.RequestOp(request_range=pb.RangeRequest(key=a)),
            ],
            failure=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b))],
        )
        resp = self.engine.write(req)
        assert resp.succeeded == ok
        if ok:
            self.rev += 1
            self._record(a, value, self.rev)
            inner = resp.responses[1].response_range
            assert [kv.value for kv in inner.kvs] == [value]  # a txn reads its own writes
        elif b in state:
            self.rev += 1
            self._record(b, None, self.rev)
        assert resp.header.revision == self.rev

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        target = data.draw(st.integers(min_value=1, max_value=self.rev))
        if target <= self.compacted:
            try:
                self.engine.write(pb.CompactionRequest(revision=target))
            except errors.Compacted:
                return
            raise AssertionError("compacting at or below the compacted revision must fail")
        self.engine.write(pb.CompactionRequest(revision=target))
        self.compacted = target

    @precondition(lambda self: self.rev > 1)
    @rule()
    def restart(self) -> None:
        self.engine = self.engine.reopen()
        assert self.engine.store.committed_rev == self.rev
        if self.engine.store.checkpoint_dir is not None:  # what the checkpoint gave is what a scan gives
            assert index_state(self.engine.store) == index_state(MVCCStore(self.storage))

    @invariant()
    def reads_match_model(self) -> None:
        store = self.engine.store
        assert store.committed_rev == self.rev
        for rev in range(max(self.compacted, 1), self.rev + 1):
            want = model_state(self.history, rev)
            rr = pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev)
            got = range_at(store, rr, store.check_rev(rev))
            assert got.count == len(want)
            assert [
                (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in got.kvs
            ] == [(k, *want[k]) for k in sorted(want)]
            # a page and a bare count see the same keys (they take their own, faster paths)
            page = range_at(store, pb.RangeRequest(key=b"\0", range_end=b"\0", revision=rev, limit=2), rev)
            assert (page.count, page.more) == (len(want), len(want) > 2)
            assert [kv.key for kv in page.kvs] == sorted(want)[:2]
            only = range_at(store, pb.RangeRequest(key=b"\0", range_end=b"\0", count_only=True), rev)
            assert (only.count, len(only.kvs)) == (len(want), 0)
        if self.compacted > 1:
            with pytest.raises(errors.Compacted):
                store.check_rev(self.compacted - 1)
        with pytest.raises(errors.FutureRevision):
            store.check_rev(self.rev + 1)


MVCCMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_mvcc_matches_model = MVCCMachine.TestCase


class CheckpointMachine(MVCCMachine):
    """The same, restarting from index checkpoints taken at random points: then writes, deletes
    and compactions go on before the restart, which must build the index a scan would."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="metastore-checkpoint-test-"))
        self.engine = Engine(self.storage, checkpoint_dir=self.dir)

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule()
    def checkpoint(self) -> None:
        made = self.engine.store.checkpoint()
        assert made is not None  # the test engine commits every write before it returns
        self.engine.store.save_checkpoint(*made)


CheckpointMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_mvcc_restarts_from_checkpoints = CheckpointMachine.TestCase


class SmallCacheMachine(MVCCMachine):
    """The same with room for about two newest values (a few bytes each): nearly every read
    misses, loads and evicts, and no answer may change."""

    VALUE_BUDGET = 30

    @invariant()
    def held_values_are_the_newest(self) -> None:
        store = self.engine.store
        held = [h for _, h in store.index.all() if h.newest is not None]
        assert store.values.bytes == sum(len(h.newest or b"") for h in held) <= self.VALUE_BUDGET
        assert store.values.held == len(held)
        for h in held:
            e = h.entries[-1]
            assert not is_tombstone(e)
            assert h.newest == self.storage.get(rev_key(entry_main(e), entry_sub(e)))


SmallCacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_mvcc_with_a_small_value_cache = SmallCacheMachine.TestCase
