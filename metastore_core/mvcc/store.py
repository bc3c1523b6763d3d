"""The MVCC store: revisions over the index and the storage backend.

Writes are applied in memory at once and staged for storage; the server's
committer drains the staged writes into one synced batch (group commit) and
then marks them committed. Readers outside the apply path read at
`committed_rev`, so they never see a write that is not yet durable.

No I/O framework here: everything is plain, synchronous calls.
"""

from __future__ import annotations

import gc
import secrets
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from metastore_core import errors
from metastore_core.mvcc import checkpoint
from metastore_core.mvcc.index import Index, KeyHistory, entry_main, entry_sub, is_tombstone, pack
from metastore_core.mvcc.values import READ, ValueCache
from metastore_core.pb.mvccpb.kv_pb2 import Event, KeyValue
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageView, Write

PUT = Event.PUT
DELETE = Event.DELETE


@dataclass
class Drained:
    """Staged writes handed to the committer as one batch."""

    batch: list[Write]
    rev: int  # the newest main revision inside
    events: list[Event]
    seq: int  # staging sequence number covered
    index: int  # the consistent index the batch brings the store to


@dataclass
class Ids:
    """Identity of this store, persisted on first start."""

    cluster_id: int
    member_id: int
    raft_term: int = 1


@dataclass
class _Staged:
    batch: list[Write] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def _new_id() -> int:
    return secrets.randbits(63) | 1


def _decode(payload: bytes, skey: bytes, main: int) -> KeyValue:
    """The KeyValue a record holds, which must decode and agree with its revision key."""
    try:
        kv = KeyValue.FromString(payload)
    except DecodeError:
        raise L.CorruptRecord(f"undecodable record {skey!r}") from None
    if kv.mod_revision != main or len(skey) not in (17, 18):
        raise L.CorruptRecord(f"record {skey!r} says mod_revision {kv.mod_revision}, its key says {main}")
    return kv


class MVCCStore:
    """etcd's key-value model: revisions, generations, tombstones, compaction."""

    def __init__(
        self,
        storage: Storage,
        *,
        crc: bool = False,
        value_cache_bytes: int | None = None,
        checkpoint_dir: Path | None = None,
    ) -> None:
        """value_cache_bytes bounds the newest values held in memory (None: all, 0: none);
        checkpoint_dir is where the index checkpoint lives (None: no checkpoint, always scan)."""
        self.storage = storage
        self.checkpoint_dir = checkpoint_dir
        self.loaded_from = ""  # how the last load built the index (the member logs it)
        self.cold_below = 0  # newest values at or below this revision were not loaded (warm())
        self.index = Index()
        self.codec = L.RecordCodec(crc)
        self._value_budget = value_cache_bytes
        self.values = self._value_cache()
        self.applied_rev = 1  # newest revision applied in memory
        self.committed_rev = 1  # newest revision durable on disk
        self.compact_rev = 0
        self.consistent_index = 0  # count of applied write commands (raft index stand-in)
        self.ids = Ids(0, 0)
        self._overlay: dict[bytes, bytes] = {}  # staged, not yet on disk
        self._staged = _Staged()
        self.staged_seq = 0
        self.durable_seq = 0
        self._compact_target = 0
        self._compact_cursor: bytes | None = None  # next compaction chunk starts after this key
        self._compact_inclusive = False  # ... or at it, when its history was cut short
        self._pins: dict[int, int] = {}  # revision -> long reads in progress at it

    def _value_cache(self) -> ValueCache:
        # With CRC on, every read must check the stored record (spec §4), so nothing is held.
        return ValueCache(0 if self.codec.crc else self._value_budget)

    # ---------------------------------------------------------------- load
    LOAD_PROGRESS_EVERY = 1 << 16  # records between progress calls while loading

    def load(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Read meta and rebuild the index from disk (start-up and recovery); returns the number
        of records read. progress(records, revision) is called every LOAD_PROGRESS_EVERY records
        (a large store takes seconds to load: the member logs how far it got)."""
        s = self.storage
        fmt = s.get(L.META_FORMAT)
        crc = s.get(L.META_CRC)
        if fmt is None:
            self.ids = Ids(_new_id(), _new_id())
            crc_name = L.CRC_IEEE if self.codec.crc else L.CRC_NONE
            s.write(
                [
                    (L.META_FORMAT, L.FORMAT_VERSION),
                    (L.META_CRC, crc_name),
                    (L.META_CLUSTER_ID, L.u64(self.ids.cluster_id)),
                    (L.META_MEMBER_ID, L.u64(self.ids.member_id)),
                    (L.META_RAFT_TERM, L.u64(1)),
                ],
                sync=True,
            )
        else:
            if fmt != L.FORMAT_VERSION:
                raise errors.MetastoreError(f"unsupported data format version {fmt!r}")
            # The store's own header decides CRC, whatever the flag says now.
            self.codec = L.RecordCodec(crc == L.CRC_IEEE)
            self.ids = Ids(
                L.parse_u64(s.get(L.META_CLUSTER_ID) or L.u64(0)),
                L.parse_u64(s.get(L.META_MEMBER_ID) or L.u64(0)),
                L.parse_u64(s.get(L.META_RAFT_TERM) or L.u64(1)),
            )
        self.compact_rev = L.parse_u64(s.get(L.META_COMPACT_REV) or L.u64(0))
        scheduled = L.parse_u64(s.get(L.META_SCHEDULED_COMPACT_REV) or L.u64(0))
        self.consistent_index = L.parse_u64(s.get(L.META_CONSISTENT_INDEX) or L.u64(0))
        self.index = Index()
        self.values = values = self._value_cache()
        self._overlay.clear()
        self._staged = _Staged()
        self._compact_cursor = None
        # A view reads past the block cache: a full scan would only evict what serving needs.
        view = s.view()
        collecting = gc.isenabled()
        # The load makes two tracked objects per key and no garbage: left on, the cyclic
        # collector walked the growing heap again and again (300k keys: 1.8 s of CPU, 0.85 s off).
        gc.disable()
        try:
            since, histories = self._from_checkpoint(view, scheduled)
            records, top = self._replay(view, since + 1 if since else 0, histories, progress)
        finally:
            view.close()
            if collecting:
                gc.enable()
        self.cold_below = since if values.budget != 0 else 0
        self.index = Index.from_histories(histories)
        values.recount(histories.values())
        # A finished chunk of a compaction may have dropped the newest record (a tombstone at
        # the compacted revision), so the scheduled revision also bounds the current one.
        self.applied_rev = self.committed_rev = max(top, since, self.compact_rev, scheduled, 1)
        self.staged_seq = self.durable_seq = 0
        if scheduled > self.compact_rev:
            # A compaction was asked for but not finished before a stop: finish it.
            self.compact_rev = 0
            self.compact(scheduled)
            while self.compact_pending:  # at start-up nothing waits: finish in one go
                self.compact_step(1 << 62)
            d = self.drain()
            if d is not None:
                s.write(d.batch, sync=True)
                self.mark_durable(d)
        return records

    def _from_checkpoint(self, view: StorageView, scheduled: int) -> tuple[int, dict[bytes, KeyHistory]]:
        """(R, the index as of revision R) from the checkpoint when it stands for this store
        (checkpoint.py says when), else (0, {}) and a stale file is removed."""
        where = self.checkpoint_dir
        data = None if where is None else checkpoint.read(where)
        if where is None or data is None:
            self.loaded_from = "scan (no index checkpoint)"
            return 0, {}
        try:
            head, histories = checkpoint.decode(data)
            if view.get(L.META_INDEX_CHECKPOINT) != head.token:
                raise checkpoint.StaleCheckpoint("the store does not hold its token")
            if (head.compact, head.scheduled) != (self.compact_rev, scheduled):
                raise checkpoint.StaleCheckpoint("the store was compacted since")
            newest = head.newest
            if (
                newest
                and view.get(L.rev_key(entry_main(newest), entry_sub(newest), is_tombstone(newest))) is None
            ):
                raise checkpoint.StaleCheckpoint("the store lacks the newest record it names")
        except checkpoint.StaleCheckpoint as exc:
            checkpoint.remove(where)
            self.loaded_from = f"scan (index checkpoint stale: {exc})"
            return 0, {}
        self.loaded_from = f"index checkpoint of revision {head.revision} ({len(histories)} keys)"
        return head.revision, histories

    def checkpoint(self) -> tuple[bytes, bytes] | None:
        """(token, file bytes) of an index checkpoint now, or None while the index is not all
        durable or a compaction is under way. Call on the loop: it reads the whole index."""
        if self.applied_rev != self.committed_rev or self.durable_seq != self.staged_seq:
            return None
        if self.compact_pending or self.checkpoint_dir is None:
            return None
        scheduled = L.parse_u64(self.storage.get(L.META_SCHEDULED_COMPACT_REV) or L.u64(0))
        head = checkpoint.Header(checkpoint.new_token(), self.committed_rev, self.compact_rev, scheduled)
        return head.token, checkpoint.encode(head, *self.index.columns())

    def save_checkpoint(self, token: bytes, data: bytes) -> None:
        """Write a checkpoint (from checkpoint()) durably, then its token into the store: blocking
        I/O, ordered with the batch writes (the committer's thread)."""
        assert self.checkpoint_dir is not None
        checkpoint.write(self.checkpoint_dir, data)
        self.storage.write([(L.META_INDEX_CHECKPOINT, token)], sync=True)

    def warm(self, step: int = 2000) -> Generator[int, None, None]:
        """Hold the newest values a checkpoint load left in storage (those at or below
        cold_below), `step` records a next(); yields the values held so far. The caller runs
        it between requests: a value written meanwhile is newer and held already, so a
        record is held only while it is still its key's newest and none is held for it."""
        index, values, below = self.index, self.values, self.cold_below
        if not below:
            return
        view = self.storage.view()
        start, stop = L.rev_range(0, below + 1)
        unpack = L.REV_KEY.unpack_from
        done = held = 0
        try:
            for skey, record in view.scan(start, stop):
                done += 1
                if done % step == 0:
                    yield held
                    if self.index is not index or self.cold_below != below:
                        return  # a reload: it decides again what is cold
                if len(skey) == 18:
                    continue
                main, sub = unpack(skey, 1)
                payload = self.codec.decode(record, skey)
                h = index.get(_decode(payload, skey, main).key)
                if h is not None and h.newest is None and h.entries[-1] == (main << 33) | (sub << 1):
                    values.fill(h, payload)
                    if h.newest is None:
                        break  # the budget is full: the rest stays in storage
                    held += 1
        finally:
            view.close()
        self.cold_below = 0
        yield held

    def _replay(
        self,
        view: StorageView,
        from_rev: int,
        histories: dict[bytes, KeyHistory],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Add every record from main revision from_rev on to histories, in revision order, and
        hold newest values as the cache allows; returns (records read, newest main revision).

        The loop is the start-up's cost (1M records: ~3 s here), so it is written flat: one
        decode per record, no calls it can do without (each cost ~5 % of the load)."""
        values = self.values
        fill = None if values.budget is None else values.fill  # None: every value is held
        decode, crc = self.codec.decode, self.codec.crc
        unpack = L.REV_KEY.unpack_from
        get = histories.get
        every = self.LOAD_PROGRESS_EVERY
        records = top = 0
        start, stop = L.rev_range(from_rev, 1 << 63)
        for skey, record in view.scan(start, stop):
            records += 1
            if progress is not None and records % every == 0:
                progress(records, top)
            main, sub = unpack(skey, 1)
            payload = decode(record, skey) if crc else record
            kv = _decode(payload, skey, main)
            key = kv.key
            h = get(key)
            if h is None:
                h = histories[key] = KeyHistory()
            if len(skey) == 18:  # a tombstone
                h.entries.append((main << 33) | (sub << 1) | 1)
                h.create = h.version = h.lease = 0
                if fill is None:
                    h.newest = None
                else:
                    values.forget(h)
            else:
                h.entries.append((main << 33) | (sub << 1))
                h.create, h.version, h.lease = kv.create_revision, kv.version, kv.lease
                if fill is None:
                    h.newest = payload  # counted once, after the load (values.recount)
                else:
                    fill(h, payload)
            top = main
        return records, top

    # ---------------------------------------------------------------- reads
    def check_rev(self, rev: int) -> int:
        """The revision a read asked for, checked: 0 means current."""
        if rev <= 0:
            return self.committed_rev
        if rev > self.committed_rev:
            raise errors.FutureRevision()
        if rev < self.compact_rev:
            raise errors.Compacted()
        return rev

    def live(self, key: bytes, end: bytes, rev: int) -> Iterator[tuple[bytes, int, KeyHistory]]:
        """(key, entry, history) of every key alive at rev in etcd's range, ascending."""
        for k, h in self.index.histories(key, end):
            last = h.entries[-1]
            if last >> 33 <= rev:  # reading the newest revision, the common case (h.at inlined)
                if not last & 1:
                    yield k, last, h
            else:
                e = h.at(rev)
                if e is not None:
                    yield k, e, h

    @contextmanager
    def pinned(self, rev: int) -> Iterator[None]:
        """Hold rev readable while a read proceeds in steps (compaction waits below it)."""
        self._pins[rev] = self._pins.get(rev, 0) + 1
        try:
            yield
        finally:
            left = self._pins[rev] - 1
            if left:
                self._pins[rev] = left
            else:
                del self._pins[rev]

    def count_live(self, key: bytes, end: bytes, rev: int) -> int:
        """How many keys in etcd's range are alive at rev (live() without building tuples)."""
        n = 0
        for h in self.index.history_values(key, end):
            last = h.entries[-1]
            if last >> 33 <= rev:
                n += not last & 1
            elif h.at(rev) is not None:
                n += 1
        return n

    def kv(self, entry: int, h: KeyHistory) -> KeyValue:
        """The stored KeyValue of one index entry of history h."""
        return KeyValue.FromString(self.kv_bytes(entry, h))

    def kv_bytes(self, entry: int, h: KeyHistory) -> bytes:
        """The serialized KeyValue of one entry of h: from memory when it is the newest and held."""
        newest = h.newest
        if newest is not None and entry == h.entries[-1]:
            h.clock = READ  # held implies in the ring; unused without a budget
            return newest
        skey = L.rev_key(entry_main(entry), entry_sub(entry), is_tombstone(entry))
        payload = self._overlay.get(skey)
        if payload is None:
            record = self.storage.get(skey)
            if record is None:
                raise errors.MetastoreError(f"index entry {skey!r} missing from storage")
            payload = self.codec.decode(record, skey)
        if entry == h.entries[-1]:  # the newest value, not held (evicted, or never loaded)
            self.values.misses += 1
            self.values.hold(h, payload)
        return payload

    def get(self, key: bytes, rev: int) -> KeyValue | None:
        """The KeyValue of key at rev, or None."""
        h = self.index.get(key)
        if h is None or not h.entries:
            return None
        e = h.at(rev)
        return None if e is None else self.kv(e, h)

    def history(self, from_rev: int, to_rev: int) -> Iterator[Event]:
        """Every committed change with from_rev <= revision <= to_rev, in order."""
        start, stop = L.rev_range(from_rev, to_rev + 1)
        for skey, record in self.storage.scan(start, stop):
            tomb = len(skey) == 18
            kv = KeyValue.FromString(self.codec.decode(record, skey))
            yield Event(type=DELETE if tomb else PUT, kv=kv)

    def key_count(self) -> int:
        return sum(1 for _, h in self.index.all() if h.alive)

    # ---------------------------------------------------------------- writes
    def begin(self) -> WriteTxn:
        """Start the one write of the next revision."""
        return WriteTxn(self)

    def stage(self, key: bytes, value: bytes | None) -> None:
        """Stage a non-MVCC write (meta, lease, alarm) into the next batch."""
        self._staged.batch.append((key, value))
        self.staged_seq += 1

    def _stage_change(self, skey: bytes, payload: bytes, event: Event) -> None:
        self._overlay[skey] = payload
        self._staged.batch.append((skey, self.codec.encode(payload)))
        self._staged.events.append(event)

    @property
    def staged_writes(self) -> int:
        """Storage writes staged for the next batch."""
        return len(self._staged.batch)

    def drain(self) -> Drained | None:
        """Take everything staged since the last drain, or None."""
        if self.durable_seq == self.staged_seq and not self._staged.batch:
            return None
        staged, self._staged = self._staged, _Staged()
        staged.batch.append((L.META_CONSISTENT_INDEX, L.u64(self.consistent_index)))
        return Drained(staged.batch, self.applied_rev, staged.events, self.staged_seq, self.consistent_index)

    def mark_durable(self, d: Drained) -> None:
        """The committer wrote d to disk: make it visible to readers."""
        for skey, _ in d.batch:
            self._overlay.pop(skey, None)
        self.committed_rev = max(self.committed_rev, d.rev)
        self.durable_seq = d.seq

    # ---------------------------------------------------------------- compaction
    # Compaction is split in two so a big one never stalls requests: `compact`
    # moves compact_rev at once (reads below it fail from then on) and
    # schedules the physical part; `compact_step` walks the index a chunk of
    # keys at a time, dropping history and staging the deletes, resuming after
    # the last key it did. Reads at or above compact_rev give the same answer
    # whether a key's old history is dropped yet or not, and writes only add
    # entries newer than compact_rev, so chunks may interleave with requests.
    # With incremental_compaction off (the unit-test engine), compact finishes
    # the walk before it returns.
    incremental_compaction = False

    def compact(self, rev: int) -> int:
        """Drop history below rev (etcd semantics); returns revisions removed so far."""
        if rev <= self.compact_rev:
            raise errors.Compacted()
        if rev > self.committed_rev:
            raise errors.FutureRevision()
        self.compact_rev = rev
        self.stage(L.META_SCHEDULED_COMPACT_REV, L.u64(rev))
        self.stage(L.META_INDEX_CHECKPOINT, None)  # records it indexes go: it stands for no store now
        self._compact_target = rev
        self._compact_cursor = b""  # (re)start: keys already done need the new target too
        self._compact_inclusive = False
        dropped = 0
        if not self.incremental_compaction:
            while self.compact_pending:
                dropped += self.compact_step(1 << 62)
        return dropped

    @property
    def compact_pending(self) -> bool:
        """True while a compaction's physical part is not finished."""
        return self._compact_cursor is not None

    def compact_step(self, budget: int = 10_000) -> int:
        """Compact about `budget` index entries' worth of keys; returns revisions dropped.

        Does nothing while a read in steps is pinned below the target: it would see history
        vanish between its steps (`pinned`)."""
        cursor = self._compact_cursor
        if cursor is None:
            return 0
        rev = self._compact_target
        if self._pins and min(self._pins) < rev:
            return 0
        dropped = work = 0
        resume: tuple[bytes, bool] | None = None  # (key, inclusive) to start the next step at
        gone: list[bytes] = []
        for k in self.index.keys_after(cursor, self._compact_inclusive):
            h = self.index.get(k)
            if h is None:
                continue
            room = max(budget - work, 1)
            old = h.compact(rev, room)
            for e in old:
                self.stage(L.rev_key(entry_main(e), entry_sub(e), is_tombstone(e)), None)
            dropped += len(old)
            work += 1 + len(old)
            if len(old) == room:  # maybe more of this key's history left: come back to it
                resume = (k, True)
                break
            if not h.entries:
                gone.append(k)
            if work >= budget:
                resume = (k, False)
                break
        for k in gone:
            self.index.remove(k)
        if resume is None:
            self._compact_cursor = None
            self.stage(L.META_COMPACT_REV, L.u64(rev))
        else:
            self._compact_cursor, self._compact_inclusive = resume
        return dropped


class WriteTxn:
    """The changes of one main revision; sub-revisions count within it."""

    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.rev = store.applied_rev + 1
        self.sub = 0

    @property
    def changed(self) -> bool:
        return self.sub > 0

    def put(self, key: bytes, value: bytes, lease: int) -> KeyValue:
        """Write key; returns the new KeyValue."""
        s = self.store
        h = s.index.get_or_add(key)
        if h.entries and not h.entries[-1] & 1:
            create, version = h.create, h.version + 1
        else:
            create, version = self.rev, 1
        kv = KeyValue(
            key=key, create_revision=create, mod_revision=self.rev, version=version, value=value, lease=lease
        )
        h.entries.append(pack(self.rev, self.sub))
        h.create, h.version, h.lease = create, version, lease
        payload = kv.SerializeToString()
        s.values.hold(h, payload)
        s._stage_change(L.rev_key(self.rev, self.sub), payload, Event(type=PUT, kv=kv))
        self._bump()
        return kv

    def delete(self, key: bytes, h: KeyHistory) -> None:
        """Write a tombstone for a live key."""
        kv = KeyValue(key=key, mod_revision=self.rev)
        h.entries.append(pack(self.rev, self.sub, True))
        h.create = h.version = h.lease = 0
        self.store.values.forget(h)
        self.store._stage_change(
            L.rev_key(self.rev, self.sub, True), kv.SerializeToString(), Event(type=DELETE, kv=kv)
        )
        self._bump()

    def _bump(self) -> None:
        self.sub += 1
        s = self.store
        s.staged_seq += 1
        if s.applied_rev < self.rev:
            s.applied_rev = self.rev
