"""etcd's Watch stream protocol, sans-IO: requests and events in, responses out.

A `WatchHub` holds every watcher of the node, indexed by key and range, and is
fed by the commit path (`on_events`, after each durable batch). A
`WatchSession` is one Watch stream: `receive(request)` answers creates, cancels
and progress requests at once; `take()` hands out what the stream should send
next (live events, catch-up from the store, progress notices, server cancels).
The gRPC adapter only runs the receive and send loops around these calls.

Rules (etcd 3.4/3.5 behaviour unless noted):
1.  Every create gets `created` in request order, before any event of that
    watcher. IDs are per stream from 0; a client-chosen id (non-zero) is
    honoured; an id in use is refused with watch_id -1 and etcd's reason.
2.  Cancel answers `{watch_id, canceled}`; an unknown id gets no reply.
3.  start_revision 0 means "from the next revision"; one in the past replays
    the store's history first (catch-up, several revisions per response, header
    revision = current); one below the compaction point ends the watcher with
    `{canceled, compact_revision}` and header revision 0; one in the future
    waits for it.
4.  Live events: one response per watcher per revision, header revision = that
    revision; the events of one revision are never split (unless the watcher
    asked for `fragment` and the response is larger than the request limit).
    When a stream falls behind (several revisions buffered for one watcher at
    send time), they go out as one response of whole revisions, header = the
    newest, exactly like etcd's catch-up responses: one gRPC message costs far
    more in Python than the events in it, so this is what keeps a loaded
    stream from falling further behind.
5.  A progress request is answered with watch_id -1 and the newest revision R
    such that every event up to R has already been handed out on this stream
    (the current revision when all watchers are in sync, as fixed etcd does).
    `progress_tick()` sends `{watch_id, header rev}` to idle progress_notify
    watchers that are in sync.

Slow consumers (etcd's unsynced/victim watchers, made per watcher here):
    A synced watcher buffers live responses up to `buffer_events` events. When
    a revision does not fit, the watcher stops taking live events and becomes a
    *victim*: it drops what it buffered and, once its stream can send again,
    replays everything from the first revision it had not handed out, from the
    store, like a watcher with a past start_revision, until it is in sync
    again. Memory per watcher is bounded by the buffer whatever the consumer
    does, and a victim holds no events at all. Only synced watchers are in the
    hub's key and range index, so a victim (or any watcher catching up) costs
    a write nothing: 200 stalled streams leave the fan-out as cheap as none
    (benchmarks/stalled_watchers.py). A victim that has fallen more than
    `max_lag_revisions` revisions behind the store when its stream drains is
    cancelled with `cancel_reason` = SLOW_REASON (after the responses it
    already buffered, so a client resumes from its last revision + 1 with
    nothing missing). If the history it needs is compacted meanwhile, it is
    cancelled as compacted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import cast

from metastore_core.engine.keyrange import in_range
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import Event

PUT = Event.PUT
DELETE = Event.DELETE
NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE

DUPLICATE_ID_REASON = "mvcc: duplicate watch ID provided on the WatchStream"
EMPTY_RANGE_REASON = "mvcc: watcher range is empty"
SLOW_REASON = "metastore: watcher too slow: fell more than {limit} revisions behind the store"

HeaderFiller = Callable[[pb.ResponseHeader, int], None]
# A watcher's buffered output: (first revision inside, events, event bytes, header, body).
# Live events stay (shared header, shared event list) until send time, so a revision costs a
# tuple per watcher and a stream that is behind builds one response for many revisions;
# everything else (catch-up, progress, cancel) is a ready response with header None.
Entry = tuple[int, int, int, "pb.ResponseHeader | None", "pb.WatchResponse | list[Event]"]


@dataclass(frozen=True)
class WatchLimits:
    """Bounds of the watch fan-out (see the module doc, 'Slow consumers')."""

    buffer_events: int = 1024  # live events buffered per watcher before it turns victim
    buffer_bytes: int = 4 << 20  # ... or live event bytes, whichever comes first
    max_lag_revisions: int = 100_000  # a victim further behind than this is cancelled
    catchup_revisions: int = 1000  # revisions per catch-up response (etcd: watchBatchMaxRevs)
    catchup_bytes: int = 1 << 20  # a catch-up response stops at a revision boundary past this
    fragment_bytes: int = 1536 * 1024  # split point for fragment=true (etcd: --max-request-bytes)


def fragments(resp: pb.WatchResponse, limit: int) -> list[pb.WatchResponse]:
    """Split resp into pieces of at most about limit bytes; all but the last have fragment set."""
    if len(resp.events) < 2 or resp.ByteSize() < limit:
        return [resp]
    pieces: list[pb.WatchResponse] = []
    base = pb.WatchResponse(header=resp.header, watch_id=resp.watch_id)
    overhead = base.ByteSize() + 8
    cur = pb.WatchResponse()
    cur.CopyFrom(base)
    size = overhead
    for ev in resp.events:
        ev_size = ev.ByteSize() + 6
        if len(cur.events) and size + ev_size > limit:
            cur.fragment = True
            pieces.append(cur)
            cur = pb.WatchResponse()
            cur.CopyFrom(base)
            size = overhead
        cur.events.append(ev)
        size += ev_size
    pieces.append(cur)
    return pieces


class Watcher:
    """One watcher: its range and options, and where it is in the revision stream."""

    __slots__ = (
        "buffer",
        "buffered_bytes",
        "buffered_events",
        "closing",
        "end",
        "fragment",
        "id",
        "key",
        "next_rev",
        "nodelete",
        "noput",
        "prev_kv",
        "progress_notify",
        "sent_since_tick",
        "session",
        "synced",
        "victim",
    )

    def __init__(self, session: WatchSession, wid: int, req: pb.WatchCreateRequest, next_rev: int) -> None:
        self.session = session
        self.id = wid
        self.key = req.key or b"\0"
        self.end = req.range_end
        self.prev_kv = req.prev_kv
        self.noput = NOPUT in req.filters
        self.nodelete = NODELETE in req.filters
        self.progress_notify = req.progress_notify
        self.fragment = req.fragment
        self.next_rev = next_rev  # first revision not yet buffered or handed out
        self.synced = True  # takes live events (False: catching up from the store)
        self.victim = False  # fell out of sync because its buffer was full
        self.closing = False  # cancelled by the server; drains its buffer, then goes
        self.sent_since_tick = False
        # (first revision inside, events, event bytes, response), handed out in order
        self.buffer: deque[Entry] = deque()
        self.buffered_events = 0
        self.buffered_bytes = 0

    @property
    def single_key(self) -> bool:
        return not self.end

    def matches(self, key: bytes) -> bool:
        return in_range(key, self.key, self.end)

    def wants(self, ev: Event) -> bool:
        return not ((ev.type == PUT and self.noput) or (ev.type == DELETE and self.nodelete))


class WatchHub:
    """Every watcher of the node, indexed by key and range, fed by the commit path."""

    def __init__(self, store: MVCCStore, header: HeaderFiller, limits: WatchLimits | None = None) -> None:
        self.store = store
        self.header = header
        self.limits = limits or WatchLimits()
        self.sessions: set[WatchSession] = set()
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        # Figures for stats and tests.
        self.victims_total = 0
        self.slow_cancels_total = 0
        self.events_total = 0

    # ------------------------------------------------------------ sessions
    def open(self) -> WatchSession:
        """A new session (one Watch stream)."""
        s = WatchSession(self)
        self.sessions.add(s)
        return s

    def close(self, session: WatchSession) -> None:
        """Forget a stream and all its watchers (client gone, or shutdown)."""
        for w in list(session.watchers.values()):
            self._remove(w)
        session.watchers.clear()
        session._ready.clear()
        self.sessions.discard(session)

    @property
    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self.sessions)

    @property
    def unsynced_count(self) -> int:
        """Watchers not in sync with the store (from a past revision, or fallen behind: out of
        the fan-out until they catch up)."""
        return sum(1 for s in self.sessions for w in s.watchers.values() if not w.synced and not w.closing)

    def _add(self, w: Watcher) -> None:
        if w.single_key:
            self._by_key.setdefault(w.key, set()).add(w)
        else:
            self._ranges.add(w)

    def _remove(self, w: Watcher) -> None:
        if w.single_key:
            group = self._by_key.get(w.key)
            if group is not None:
                group.discard(w)
                if not group:
                    del self._by_key[w.key]
        else:
            self._ranges.discard(w)

    # ------------------------------------------------------------ fan-out
    def on_events(self, rev: int, events: list[Event]) -> None:
        """A durable batch (events in revision order); rev is its newest revision."""
        if not self._by_key and not self._ranges:  # nobody watches: skip the per-event walk
            self.events_total += len(events)
            return
        woken: set[WatchSession] = set()
        for main, group in groupby(events, key=lambda ev: ev.kv.mod_revision):
            evs = list(group)
            self.events_total += len(evs)
            self._publish(main, evs, woken)
        for s in woken:
            s.wake()

    def _publish(self, rev: int, events: list[Event], woken: set[WatchSession]) -> None:
        matched: dict[Watcher, list[Event]] = {}
        by_key, ranges = self._by_key, self._ranges
        for ev in events:
            key = ev.kv.key
            group = by_key.get(key)
            if group:
                for w in group:
                    matched.setdefault(w, []).append(ev)
            for w in ranges:
                if w.matches(key):
                    matched.setdefault(w, []).append(ev)
        if not matched:
            return
        header = pb.ResponseHeader()
        self.header(header, rev)
        variants: dict[tuple[bool, bool, bool], tuple[list[Event], int]] = {}
        prev_cache: dict[bytes, Event] = {}
        limit, limit_bytes = self.limits.buffer_events, self.limits.buffer_bytes
        for w, evs in matched.items():
            if w.closing or rev < w.next_rev:
                continue
            if len(evs) == len(events):  # the whole revision: share one prepared list
                vkey = (w.prev_kv, w.noput, w.nodelete)
                prepared = variants.get(vkey)
                if prepared is None:
                    prepared = variants[vkey] = self._prepare(w, evs, prev_cache)
            else:
                prepared = self._prepare(w, evs, prev_cache)
            out, size = prepared
            w.next_rev = rev + 1
            if not out:
                continue
            if w.buffered_events and (
                w.buffered_events + len(out) > limit or w.buffered_bytes + size > limit_bytes
            ):
                self._make_victim(w, rev)
                woken.add(w.session)
                continue
            w.buffer.append((rev, len(out), size, header, out))
            w.buffered_events += len(out)
            w.buffered_bytes += size
            w.session._ready[w] = None
            woken.add(w.session)

    def _prepare(
        self, w: Watcher, evs: list[Event], prev_cache: dict[bytes, Event]
    ) -> tuple[list[Event], int]:
        """The events w gets (filtered, with prev_kv filled when asked) and their size."""
        out = [ev for ev in evs if w.wants(ev)] if (w.noput or w.nodelete) else evs
        if w.prev_kv:
            out = [self._with_prev(ev, prev_cache) for ev in out]
        return out, sum(ev.ByteSize() for ev in out)

    def _with_prev(self, ev: Event, cache: dict[bytes, Event] | None = None) -> Event:
        key = ev.kv.key
        if cache is not None and key in cache:
            return cache[key]
        prev = self.store.get(key, ev.kv.mod_revision - 1)
        full = Event(type=ev.type, kv=ev.kv, prev_kv=prev) if prev is not None else ev
        if cache is not None:
            cache[key] = full
        return full

    def _make_victim(self, w: Watcher, rev: int) -> None:
        """w's buffer is full: stop live delivery; it catches up from the store later.

        What it buffered is dropped and replayed from the store too: a stalled stream then
        holds nothing (held events cost memory and every garbage collection's walk)."""
        first = next((e[0] for e in w.buffer if e[3] is not None), rev)  # oldest live revision
        w.buffer.clear()
        w.buffered_events = w.buffered_bytes = 0
        w.synced = False
        w.victim = True
        w.next_rev = min(first, rev)
        self.victims_total += 1
        self._remove(w)  # out of the fan-out until it has caught up: it costs writes nothing
        w.session._ready[w] = None

    # ------------------------------------------------------------ progress
    def progress_tick(self) -> None:
        """Periodic progress notices for idle, in-sync progress_notify watchers."""
        for s in list(self.sessions):
            if s.progress_tick():
                s.wake()


def _noop() -> None:
    pass


class WatchSession:
    """One Watch stream: requests in, responses out (see the module doc)."""

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.store = hub.store
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        # Watchers with something to hand out (buffer or catch-up), in arrival order.
        self._ready: dict[Watcher, None] = {}
        self.wake: Callable[[], None] = _noop  # set by the adapter: "take() has work"

    # ------------------------------------------------------------ requests
    def receive(self, req: pb.WatchRequest) -> list[pb.WatchResponse]:
        """Handle one request; returns the replies to send before anything take() gives later."""
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            return self._create(req.create_request)
        if kind == "cancel_request":
            return self._cancel(req.cancel_request.watch_id)
        if kind == "progress_request":
            resp = pb.WatchResponse(watch_id=-1)
            self.hub.header(resp.header, self.progress_rev())
            return [resp]
        return []

    def _create(self, req: pb.WatchCreateRequest) -> list[pb.WatchResponse]:
        store = self.store
        current = store.committed_rev
        refused = None
        if req.watch_id != 0 and req.watch_id in self.watchers:
            refused = DUPLICATE_ID_REASON
        elif req.range_end not in (b"", b"\0") and (req.key or b"\0") >= req.range_end:
            refused = EMPTY_RANGE_REASON
        if refused is not None:
            resp = pb.WatchResponse(watch_id=-1, created=True, canceled=True, cancel_reason=refused)
            self.hub.header(resp.header, current)
            return [resp]
        if req.watch_id != 0:
            wid = req.watch_id
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            wid = self._next_id
            self._next_id += 1
        start = req.start_revision or current + 1
        # etcd compares with a compaction point of -1 before the first compaction, so a
        # start_revision below -1 is "compacted" (compact_revision -1) and -1 replays it all.
        floor = store.compact_rev if store.compact_rev > 0 else -1
        created = pb.WatchResponse(watch_id=wid, created=True)
        self.hub.header(created.header, current)
        if start < floor:
            return [created, self._compacted(wid, floor)]
        w = Watcher(self, wid, req, max(start, 1))
        self.watchers[wid] = w
        if w.next_rev <= current:
            w.synced = False  # replays from the store first; joins the fan-out once in sync
            self._ready[w] = None
        else:
            self.hub._add(w)
        return [created]

    def _compacted(self, wid: int, compact_rev: int | None = None) -> pb.WatchResponse:
        rev = self.store.compact_rev if compact_rev is None else compact_rev
        resp = pb.WatchResponse(watch_id=wid, canceled=True, compact_revision=rev)
        self.hub.header(resp.header, 0)
        return resp

    def _cancel(self, wid: int) -> list[pb.WatchResponse]:
        w = self.watchers.pop(wid, None)
        if w is None:
            return []
        self._drop(w)
        resp = pb.WatchResponse(watch_id=wid, canceled=True)
        self.hub.header(resp.header, self.store.committed_rev)
        return [resp]

    def _drop(self, w: Watcher) -> None:
        self.hub._remove(w)
        self._ready.pop(w, None)
        w.buffer.clear()
        w.buffered_events = w.buffered_bytes = 0
        w.closing = True

    def progress_rev(self) -> int:
        """Newest revision R such that every event up to R was already handed out here."""
        rev = self.store.committed_rev
        for w in self.watchers.values():
            if w.buffer:
                rev = min(rev, w.buffer[0][0] - 1)
            elif not w.synced:
                rev = min(rev, w.next_rev - 1)
        return rev

    def progress_tick(self) -> bool:
        """Queue a progress notice for idle, synced progress_notify watchers; True if any."""
        queued = False
        rev = self.store.committed_rev
        for w in self.watchers.values():
            if w.progress_notify and w.synced and not w.buffer and not w.sent_since_tick and not w.closing:
                resp = pb.WatchResponse(watch_id=w.id)
                self.hub.header(resp.header, rev)
                w.buffer.append((rev + 1, 0, 0, None, resp))
                self._ready[w] = None
                queued = True
            w.sent_since_tick = False
        return queued

    # ------------------------------------------------------------ output
    @property
    def has_output(self) -> bool:
        return bool(self._ready)

    def take(self, max_responses: int = 256) -> list[pb.WatchResponse]:
        """The next responses to send, oldest first per watcher; [] when there is nothing to do."""
        out: list[pb.WatchResponse] = []
        limits = self.hub.limits
        for w in list(self._ready):
            if len(out) >= max_responses:
                break
            if not w.buffer and not w.synced and not w.closing:
                self._catch_up(w)
            while w.buffer and len(out) < max_responses:
                _, n, size, header, body = w.buffer.popleft()
                w.buffered_events -= n
                w.buffered_bytes -= size
                if n:
                    w.sent_since_tick = True
                if header is None:
                    resp = cast(pb.WatchResponse, body)
                else:
                    resp = self._live(w, header, cast(list[Event], body), size)
                if w.fragment:
                    out.extend(fragments(resp, limits.fragment_bytes))
                else:
                    out.append(resp)
            if w.buffer:
                continue
            if w.closing:
                self._ready.pop(w, None)
                if self.watchers.get(w.id) is w:
                    del self.watchers[w.id]
            elif w.synced:
                self._ready.pop(w, None)
        return out

    def _live(
        self, w: Watcher, header: pb.ResponseHeader, events: list[Event], size: int
    ) -> pb.WatchResponse:
        """The response for a live revision, merged with w's following live revisions if any.

        A stream that is behind gets them as one response of whole revisions, header = the
        newest, like a catch-up response: one gRPC message costs far more than its events.
        """
        buf = w.buffer
        if buf and buf[0][3] is not None:
            cap = self.hub.limits.catchup_bytes
            events = list(events)
            while buf and buf[0][3] is not None and size + buf[0][2] <= cap:
                _, n, more, nxt_header, nxt = buf.popleft()
                w.buffered_events -= n
                w.buffered_bytes -= more
                size += more
                events.extend(cast(list[Event], nxt))
                header = cast(pb.ResponseHeader, nxt_header)
        return pb.WatchResponse(header=header, watch_id=w.id, events=events)

    def _catch_up(self, w: Watcher) -> None:
        """Queue one catch-up response for w from the store (or end it: compacted, too slow)."""
        hub, store, limits = self.hub, self.store, self.hub.limits
        current = store.committed_rev
        if w.next_rev < store.compact_rev:
            self._end(w, self._compacted(w.id))
            return
        if w.victim and current - w.next_rev + 1 > limits.max_lag_revisions:
            self._too_slow(w, current)
            return
        while w.next_rev <= current:
            stop = min(current, w.next_rev + limits.catchup_revisions - 1)
            events, last = self._scan(w, w.next_rev, stop, limits.catchup_bytes)
            w.next_rev = last + 1
            if events:
                resp = pb.WatchResponse(watch_id=w.id, events=events)
                hub.header(resp.header, current)
                w.buffer.append((events[0].kv.mod_revision, len(events), 0, None, resp))
                w.buffered_events += len(events)
                return
        w.synced = True
        w.victim = False
        hub._add(w)  # every revision up to current is handed out: live events from here on

    def _scan(self, w: Watcher, lo: int, hi: int, max_bytes: int) -> tuple[list[Event], int]:
        """w's events in revisions lo..hi, stopping at a revision boundary past max_bytes."""
        out: list[Event] = []
        size = 0
        last = hi
        for main, group in _by_revision(self.store.history(lo, hi)):
            if size >= max_bytes:
                last = main - 1
                break
            for ev in group:
                if w.matches(ev.kv.key) and w.wants(ev):
                    if w.prev_kv:
                        ev = self.hub._with_prev(ev)
                    out.append(ev)
                    size += ev.ByteSize()
        return out, last

    def _too_slow(self, w: Watcher, current: int) -> None:
        self.hub.slow_cancels_total += 1
        resp = pb.WatchResponse(
            watch_id=w.id,
            canceled=True,
            cancel_reason=SLOW_REASON.format(limit=self.hub.limits.max_lag_revisions),
        )
        self.hub.header(resp.header, current)
        self._end(w, resp)

    def _end(self, w: Watcher, final: pb.WatchResponse) -> None:
        """Server-side cancel: w takes no more events; final goes out after its buffer."""
        self.hub._remove(w)
        w.closing = True
        w.synced = False
        w.buffer.append((w.next_rev, 0, 0, None, final))
        self._ready[w] = None


def _by_revision(events: Iterable[Event]) -> Iterator[tuple[int, Iterator[Event]]]:
    return groupby(events, key=lambda ev: ev.kv.mod_revision)
