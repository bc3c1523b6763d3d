"""Reads in steps: a Range over many keys and a read-only Txn, at one revision, replies in pieces.

A client's Range of a million keys used to build a million messages in one go: the event
loop stood still for seconds and health checks failed. Here a read is a generator that walks
the index STEP keys at a time and yields between steps; member/node.py gives the loop a turn
whenever a slice of about 2 ms has passed, so other requests, watch delivery and health keep
their latency while it runs (a health check crosses the loop several times: long slices add up).
Everything is read at one revision, which the caller pins against compaction for the whole
read (MVCCStore.pinned): keys written meanwhile are newer, so the answer is the one a read in
a single go would give (tests/unit/test_reads.py holds the two to each other).

The reply is built as protobuf wire pieces (engine/wire.py), KeyValues framed straight from
their stored bytes, and its size is counted as it grows: past --max-response-bytes the read
stops with ResponseTooLarge (RESOURCE_EXHAUSTED) instead of building a reply nobody can take.
A read-only Txn (etcd serves those without going through raft) runs its compares and ranges
the same way, so its work is bounded by --max-txn-ops across nesting (validate.py) and each
of its scans yields like a Range.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

from metastore_core import errors
from metastore_core.engine import wire
from metastore_core.mvcc.index import KeyHistory, entry_main
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue

T = TypeVar("T")
Steps = Generator[None, None, T]  # yields between steps; returns the result
Live = list[tuple[bytes, int, KeyHistory]]

STEP = 256  # keys per step: well under a millisecond of work, whatever is built per key
SORT_STEP = 4096  # items per sorted run (one list.sort call, ~2 ms)

_NONE, _ASCEND, _DESCEND = pb.RangeRequest.NONE, pb.RangeRequest.ASCEND, pb.RangeRequest.DESCEND
_KEY = pb.RangeRequest.KEY
_SORT_KEYS: dict[int, Callable[[KeyValue], Any]] = {
    pb.RangeRequest.KEY: lambda kv: kv.key,
    pb.RangeRequest.VERSION: lambda kv: kv.version,
    pb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    pb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    pb.RangeRequest.VALUE: lambda kv: kv.value,
}
EMPTY_KV = KeyValue()
_TARGET_FIELD = {
    pb.Compare.VERSION: "version",
    pb.Compare.CREATE: "create_revision",
    pb.Compare.MOD: "mod_revision",
    pb.Compare.LEASE: "lease",
}


def run(steps: Steps[T]) -> T:
    """Drive steps to the end at once (tests, and callers with nothing else to do)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def live_chunks(
    store: MVCCStore, key: bytes, end: bytes, rev: int, n: int = 0, after: bytes | None = None
) -> Iterator[Live]:
    """(key, entry, history) of every key alive at rev in etcd's range (after `after`), n keys
    (default STEP) a chunk."""
    index = store.index
    n = n or STEP
    while True:
        chunk = index.chunk(key, end, after, n)
        if not chunk:
            return
        out = []
        for k, h in chunk:
            last = h.entries[-1] if h.entries else 1
            if last >> 33 <= rev:  # the newest revision, the common case (KeyHistory.at inlined)
                if not last & 1:
                    out.append((k, last, h))
            else:
                e = h.at(rev)
                if e is not None:
                    out.append((k, e, h))
        yield out
        if len(chunk) < n:
            return
        after = chunk[-1][0]


# ---------------------------------------------------------------------- compare
def compare_kv(c: pb.Compare, kv: KeyValue) -> bool:
    """One Compare against one KeyValue (etcd's applyCompare)."""
    if c.target == pb.Compare.VALUE:
        a: Any = kv.value
        b: Any = c.value
    else:
        name = _TARGET_FIELD[c.target]
        a = getattr(kv, name)
        b = getattr(c, name) if c.WhichOneof("target_union") == name else 0
    r = c.result
    if r == pb.Compare.EQUAL:
        return bool(a == b)
    if r == pb.Compare.NOT_EQUAL:
        return bool(a != b)
    if r == pb.Compare.GREATER:
        return bool(a > b)
    return bool(a < b)


def compare_steps(store: MVCCStore, c: pb.Compare, rev: int) -> Steps[bool]:
    """A Compare over every key of its range at rev: all must hold; no key: a zero KeyValue."""
    found = False
    for live in live_chunks(store, c.key, c.range_end, rev):
        for _, e, h in live:
            found = True
            if not compare_kv(c, store.kv(e, h)):
                return False
        yield
    if not found:
        return c.target != pb.Compare.VALUE and compare_kv(c, EMPTY_KV)
    return True


# ---------------------------------------------------------------------- range
def range_steps(store: MVCCStore, req: pb.RangeRequest, rev: int, max_bytes: int) -> Steps[wire.Body]:
    """The fields of req's RangeResponse at rev, header left out (range_at's rules, in steps)."""
    body = wire.Body()
    key, end = req.key, req.range_end
    if req.count_only:
        n = yield from _count(store, key, end, rev, None)
        body.add(wire.scalar(wire.RANGE_COUNT, n))
        return body
    order = req.sort_order
    if req.sort_target != _KEY and order == _NONE:
        order = _ASCEND
    filtered = bool(
        req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
    )
    if filtered or (order != _NONE and not (req.sort_target == _KEY and order == _ASCEND)):
        return (yield from _sorted_or_filtered(store, req, rev, order, max_bytes))
    # Keys come ascending already: frame each stored KeyValue as it is, counting all of them.
    limit = req.limit
    count = 0
    frames, framed = wire.KVS_FRAMES, len(wire.KVS_FRAMES)
    kv_bytes, keys_only = store.kv_bytes, req.keys_only
    for live in live_chunks(store, key, end, rev):
        page = live[: limit - count] if limit else live
        count += len(live)
        pieces = []
        for _, e, h in page:
            if keys_only:
                kv = store.kv(e, h)
                kv.value = b""
                data = kv.SerializeToString()
            else:
                data = kv_bytes(e, h)
            n = len(data)
            pieces.append(frames[n] if n < framed else wire.kvs_frame(n))
            pieces.append(data)
        body.add(b"".join(pieces))
        if body.size > max_bytes:
            raise errors.ResponseTooLarge(max_bytes)
        if limit and count >= limit:
            # the page is full: count is of every key, so count the rest (cheaply)
            count += yield from _count(store, key, end, rev, live[-1][0])
            break
        yield
    body.add(wire.scalar(wire.RANGE_MORE, bool(limit) and count > limit))
    body.add(wire.scalar(wire.RANGE_COUNT, count))
    return body


def _count(store: MVCCStore, key: bytes, end: bytes, rev: int, after: bytes | None) -> Steps[int]:
    """How many keys of etcd's range (after `after`) are alive at rev, in steps."""
    n = 0
    for live in live_chunks(store, key, end, rev, STEP * 10, after):  # counting costs little per key
        n += len(live)
        yield
    return n


def _sorted_or_filtered(
    store: MVCCStore, req: pb.RangeRequest, rev: int, order: int, max_bytes: int
) -> Steps[wire.Body]:
    """etcd's order of work: fetch all, filter, sort, truncate to limit (count before filters)."""
    lo_mod, hi_mod = req.min_mod_revision, req.max_mod_revision
    lo_create, hi_create = req.min_create_revision, req.max_create_revision
    limit = req.limit
    count = size = 0
    items: list[KeyValue] = []
    for live in live_chunks(store, req.key, req.range_end, rev):
        count += len(live)
        for _, e, h in live:
            main = entry_main(e)
            if (lo_mod and main < lo_mod) or (hi_mod and main > hi_mod):
                continue
            kv = store.kv(e, h)
            created = kv.create_revision
            if (lo_create and created < lo_create) or (hi_create and created > hi_create):
                continue
            items.append(kv)
            size += kv.ByteSize()
        if not limit and size > max_bytes:  # all of it would be sent: stop before building more
            raise errors.ResponseTooLarge(max_bytes)
        yield
    if order != _NONE:
        items = yield from _sort(items, _SORT_KEYS.get(req.sort_target, _SORT_KEYS[_KEY]), order == _DESCEND)
    more = bool(limit) and len(items) > limit
    if more:
        items = items[:limit]
    body = wire.Body()
    for i in range(0, len(items), STEP):
        chunk = items[i : i + STEP]
        if req.keys_only:
            for kv in chunk:
                kv.value = b""
        # a RangeResponse holding only kvs serializes to exactly those kvs fields
        body.add(pb.RangeResponse(kvs=chunk).SerializeToString())
        if body.size > max_bytes:
            raise errors.ResponseTooLarge(max_bytes)
        yield
    body.add(wire.scalar(wire.RANGE_MORE, more))
    body.add(wire.scalar(wire.RANGE_COUNT, count))
    return body


def _sort(items: list[KeyValue], key: Callable[[KeyValue], Any], reverse: bool) -> Steps[list[KeyValue]]:
    """items sorted by key: runs of SORT_STEP sorted one per step, then merged in steps."""
    if len(items) <= SORT_STEP:
        items.sort(key=key, reverse=reverse)
        return items
    runs = []
    for i in range(0, len(items), SORT_STEP):
        run_ = items[i : i + SORT_STEP]
        run_.sort(key=key, reverse=reverse)
        runs.append(run_)
        yield
    out: list[KeyValue] = []
    for n, kv in enumerate(heapq.merge(*runs, key=key, reverse=reverse), 1):
        out.append(kv)
        if n % SORT_STEP == 0:
            yield
    return out


# ---------------------------------------------------------------------- read-only txn
def txn_steps(
    store: MVCCStore, r: pb.TxnRequest, rev: int, max_bytes: int, ranges: list[int] | None = None
) -> Steps[wire.Body]:
    """The fields of a read-only txn's TxnResponse at rev, header left out (apply.py's rules);
    ranges[0] counts the ranges it ran (etcd's etcd_mvcc_range_total)."""
    ok = True
    for c in r.compare:
        if not (yield from compare_steps(store, c, rev)):
            ok = False
            break
    body = wire.Body()
    body.add(wire.scalar(wire.TXN_SUCCEEDED, ok))
    for op in r.success if ok else r.failure:
        kind = op.WhichOneof("request")
        inner = wire.Body()
        if kind == "request_range":
            rr = op.request_range
            at = rev
            if rr.revision > 0:
                if rr.revision > rev:
                    raise errors.FutureRevision()
                if rr.revision < store.compact_rev:
                    raise errors.Compacted()
                at = rr.revision
            inner.add_field(wire.RANGE_HEADER, pb.ResponseHeader(revision=rev).SerializeToString())
            got = yield from range_steps(store, rr, at, max_bytes - body.size)
            inner.parts.extend(got.parts)
            inner.size += got.size
            number = wire.OP_RANGE
            if ranges is not None:
                ranges[0] += 1
        elif kind == "request_txn":
            inner.add_field(wire.TXN_HEADER, b"")  # inner txn headers are present and empty, as apply's
            got = yield from txn_steps(store, op.request_txn, rev, max_bytes - body.size, ranges)
            inner.parts.extend(got.parts)
            inner.size += got.size
            number = wire.OP_TXN
        else:
            raise ValueError(f"a read-only txn holds a {kind}")  # commands.mutates() said it could not
        op_body = wire.Body()
        op_body.add_body(number, inner)
        body.add_body(wire.TXN_RESPONSES, op_body)
        if body.size > max_bytes:
            raise errors.ResponseTooLarge(max_bytes)
    return body
