"""The Watch protocol as a pure session object: requests/events in, responses out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import Applier
from metastore_core.engine.entry import Entry
from metastore_core.engine.lease import Lessor
from metastore_core.engine.watch import (
    DUPLICATE_ID_REASON,
    EMPTY_RANGE_REASON,
    WatchHub,
    WatchLimits,
    WatchSession,
    fragments,
)
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import Event
from metastore_core.storage.memory import MemoryStorage

PUT, DELETE = Event.PUT, Event.DELETE


class Rig:
    """Store + applier committed inline, feeding the hub as the committer does."""

    def __init__(self, limits: WatchLimits | None = None) -> None:
        self.storage = MemoryStorage()
        self.store = MVCCStore(self.storage)
        self.store.load()
        self.applier = Applier(self.store, Lessor(self.store), Alarms(self.store), lambda: 0.0)
        self.hub = WatchHub(self.store, self._header, limits)
        self.wakes = 0

    @staticmethod
    def _header(h: pb.ResponseHeader, rev: int) -> None:
        h.cluster_id = 7
        h.revision = rev

    def write(self, cmd: object) -> object:
        resp = self.applier.apply(Entry(self.store.consistent_index + 1, 1, cmd))
        d = self.store.drain()
        if d is None:  # nothing changed (a delete that matched nothing)
            return resp
        self.storage.write(d.batch, sync=False)
        self.store.mark_durable(d)
        if d.events:
            self.hub.on_events(d.rev, d.events)
        return resp

    def put(self, key: bytes | str, value: bytes | str = b"v") -> None:
        k = key.encode() if isinstance(key, str) else key
        v = value.encode() if isinstance(value, str) else value
        self.write(pb.PutRequest(key=k, value=v))

    def delete(self, key: bytes, end: bytes = b"") -> None:
        self.write(pb.DeleteRangeRequest(key=key, range_end=end))

    def txn_puts(self, *keys: bytes) -> None:
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"t")) for k in keys]
        self.write(pb.TxnRequest(success=ops))

    def session(self) -> WatchSession:
        s = self.hub.open()

        def wake() -> None:
            self.wakes += 1

        s.wake = wake
        return s


def create(key: bytes = b"a", end: bytes = b"", **kw: object) -> pb.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end, **kw))  # type: ignore[arg-type]


def cancel(wid: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=wid))


PROGRESS = pb.WatchRequest(progress_request=pb.WatchProgressRequest())


def drain(s: WatchSession) -> list[pb.WatchResponse]:
    out: list[pb.WatchResponse] = []
    while True:
        got = s.take()
        if not got and not s.has_output:
            return out
        out.extend(got)


def evs(resps: list[pb.WatchResponse]) -> list[tuple[int, int, bytes, bytes]]:
    return [(e.kv.mod_revision, e.type, e.kv.key, e.kv.value) for r in resps for e in r.events]


# ---------------------------------------------------------------- create / cancel / progress
def test_created_ids_start_at_zero_in_order() -> None:
    rig = Rig()
    s = rig.session()
    got = [s.receive(create(b"a")), s.receive(create(b"b")), s.receive(create(b"c"))]
    assert [[(r.watch_id, r.created, r.canceled) for r in g] for g in got] == [
        [(0, True, False)],
        [(1, True, False)],
        [(2, True, False)],
    ]
    assert got[0][0].header.revision == 1 and not got[0][0].events
    # A second stream numbers from 0 again.
    assert rig.session().receive(create())[0].watch_id == 0


def test_client_chosen_id_duplicate_refused_and_auto_ids_skip_used() -> None:
    s = Rig().session()
    assert s.receive(create(watch_id=1))[0].watch_id == 1
    dup = s.receive(create(watch_id=1))
    assert len(dup) == 1
    r = dup[0]
    assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, DUPLICATE_ID_REASON)
    assert [s.receive(create())[0].watch_id for _ in range(2)] == [0, 2]


def test_empty_range_refused() -> None:
    r = Rig().session().receive(create(b"b", b"a"))[0]
    assert (r.watch_id, r.created, r.canceled, r.cancel_reason) == (-1, True, True, EMPTY_RANGE_REASON)


def test_cancel_replies_and_stops_events_unknown_id_silent() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a"))
    rig.put("a")
    got = s.receive(cancel(0))
    assert [(r.watch_id, r.canceled) for r in got] == [(0, True)]
    assert drain(s) == []  # buffered events of a cancelled watcher are dropped
    rig.put("a")
    assert drain(s) == []
    assert s.receive(cancel(0)) == [] and s.receive(cancel(42)) == []
    assert rig.hub.watcher_count == 0


def test_progress_request_reports_current_revision() -> None:
    rig = Rig()
    s = rig.session()
    rig.put("x")
    rig.put("y")
    r = s.receive(PROGRESS)
    assert [(x.watch_id, x.header.revision, len(x.events)) for x in r] == [(-1, 3, 0)]


def test_progress_request_never_claims_undelivered_events() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a"))
    rig.put("a")  # rev 2, buffered, not taken yet
    rig.put("b")  # rev 3
    assert s.receive(PROGRESS)[0].header.revision == 1
    drain(s)
    assert s.receive(PROGRESS)[0].header.revision == 3


# ---------------------------------------------------------------- events
def test_live_events_one_response_per_revision_header_is_that_revision() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a"))
    out: list[pb.WatchResponse] = []
    for write in (lambda: rig.put("a", "1"), lambda: rig.put("b", "x"), lambda: rig.put("a", "2")):
        write()
        out += drain(s)  # a consumer that keeps up
    rig.delete(b"a")
    out += drain(s)
    assert [r.header.revision for r in out] == [2, 4, 5]
    assert evs(out) == [(2, PUT, b"a", b"1"), (4, PUT, b"a", b"2"), (5, DELETE, b"a", b"")]
    dele = out[-1].events[0]
    assert dele.kv.create_revision == 0 and dele.kv.version == 0


def test_behind_consumer_gets_whole_revisions_coalesced() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a"))
    for i in range(5):
        rig.put("a", str(i))  # revs 2..6, nobody read yet
    out = drain(s)
    assert len(out) == 1 and out[0].header.revision == 6
    assert [e.kv.mod_revision for e in out[0].events] == [2, 3, 4, 5, 6]


def test_txn_and_range_delete_never_split() -> None:
    rig = Rig(WatchLimits(buffer_events=2))
    s = rig.session()
    s.receive(create(b"k", b"l"))
    rig.txn_puts(b"k1", b"k2", b"k3", b"k4", b"k5")
    out = drain(s)
    rig.delete(b"k", b"l")
    out += drain(s)
    assert [(r.header.revision, len(r.events)) for r in out] == [(2, 5), (3, 5)]


def test_prefix_fromkey_and_all_keys() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"p/", b"p0"))  # prefix p/
    s.receive(create(b"m", b"\0"))  # from key m
    s.receive(create(b"\0", b"\0"))  # everything
    s.receive(create(b"", b"\0"))  # empty key means "\0"
    for k in ("a", "p/1", "z", "p0"):
        rig.put(k)
    got: dict[int, list[bytes]] = {}
    for r in drain(s):
        got.setdefault(r.watch_id, []).extend(e.kv.key for e in r.events)
    assert got == {
        0: [b"p/1"],
        1: [b"p/1", b"z", b"p0"],
        2: [b"a", b"p/1", b"z", b"p0"],
        3: [b"a", b"p/1", b"z", b"p0"],
    }


def test_prev_kv_and_filters() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a", prev_kv=True))
    s.receive(create(b"a", filters=[pb.WatchCreateRequest.NOPUT]))
    s.receive(create(b"a", filters=[pb.WatchCreateRequest.NODELETE]))
    rig.put("a", "1")
    rig.put("a", "2")
    rig.delete(b"a")
    by: dict[int, list[Event]] = {}
    for r in drain(s):
        by.setdefault(r.watch_id, []).extend(r.events)
    prevs = [(e.type, e.prev_kv.value, e.prev_kv.mod_revision) for e in by[0]]
    assert prevs == [(PUT, b"", 0), (PUT, b"1", 2), (DELETE, b"2", 3)]
    assert not by[0][0].HasField("prev_kv")
    assert [e.type for e in by[1]] == [DELETE]
    assert [e.type for e in by[2]] == [PUT, PUT]


def test_history_catch_up_then_live_with_current_header() -> None:
    rig = Rig()
    for i in range(5):
        rig.put("a", str(i))  # revs 2..6
    s = rig.session()
    s.receive(create(b"a", start_revision=3, prev_kv=True))
    out = drain(s)
    assert len(out) == 1 and out[0].header.revision == 6  # catch-up: header = current
    assert [e.kv.mod_revision for e in out[0].events] == [3, 4, 5, 6]
    assert [e.prev_kv.value for e in out[0].events] == [b"0", b"1", b"2", b"3"]
    rig.put("a", "x")
    live = drain(s)
    assert [(r.header.revision, e.kv.mod_revision) for r in live for e in r.events] == [(7, 7)]


def test_catch_up_batches_revisions() -> None:
    rig = Rig(WatchLimits(catchup_revisions=3))
    for _ in range(7):
        rig.put("a")  # revs 2..8
    s = rig.session()
    s.receive(create(b"a", start_revision=2))
    out = drain(s)
    assert [[e.kv.mod_revision for e in r.events] for r in out] == [[2, 3, 4], [5, 6, 7], [8]]


def test_future_start_revision_waits() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a", start_revision=4))
    rig.put("a", "2")
    rig.put("a", "3")
    assert drain(s) == []
    rig.put("a", "4")
    assert evs(drain(s)) == [(4, PUT, b"a", b"4")]


def test_compacted_start_revision_cancels_with_compact_revision() -> None:
    rig = Rig()
    for _ in range(4):
        rig.put("a")
    rig.write(pb.CompactionRequest(revision=4))
    s = rig.session()
    got = s.receive(create(b"a", start_revision=2))
    assert [(r.watch_id, r.created, r.canceled) for r in got] == [(0, True, False), (0, False, True)]
    assert got[1].compact_revision == 4 and got[1].header.revision == 0 and not got[1].cancel_reason
    # compact revision itself is still watchable
    ok = s.receive(create(b"a", start_revision=4))
    assert len(ok) == 1
    assert [e.kv.mod_revision for e in drain(s)[0].events] == [4, 5]


def test_negative_start_revision_as_etcd() -> None:
    rig = Rig()
    rig.put("a")
    s = rig.session()
    got = s.receive(create(b"a", start_revision=-5))
    assert [(r.canceled, r.compact_revision) for r in got] == [(False, 0), (True, -1)]
    s.receive(create(b"a", start_revision=-1))  # replays everything
    assert [e[0] for e in evs(drain(s))] == [2]


def test_fragment_splits_large_responses_only_when_asked() -> None:
    big = b"x" * 400
    resp = pb.WatchResponse(
        watch_id=3, events=[Event(kv={"key": b"k%d" % i, "value": big}) for i in range(5)]
    )
    pieces = fragments(resp, 1000)
    assert len(pieces) > 1
    assert [p.fragment for p in pieces] == [True] * (len(pieces) - 1) + [False]
    assert [e for p in pieces for e in p.events] == list(resp.events)
    assert all(p.ByteSize() <= 1000 for p in pieces)
    assert fragments(resp, 10_000) == [resp]
    one = pb.WatchResponse(events=[Event(kv={"key": b"k", "value": big * 10})])
    assert fragments(one, 100) == [one]

    rig = Rig(WatchLimits(fragment_bytes=1000))
    s = rig.session()
    s.receive(create(b"k", b"l", fragment=True))
    s.receive(create(b"k", b"l"))
    rig.txn_puts(*[b"k%d" % i for i in range(5)])
    out = drain(s)
    rig.write(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k1", value=big))]))
    out += drain(s)
    assert sum(1 for r in out if r.watch_id == 1) == 2
    assert sum(1 for r in out if r.watch_id == 0) == 2  # small revisions: no split needed
    rig.write(
        pb.TxnRequest(
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k%d" % i, value=big)) for i in range(5)]
        )
    )
    out = drain(s)
    assert sum(1 for r in out if r.watch_id == 1) == 1
    frag = [r for r in out if r.watch_id == 0]
    assert len(frag) > 1 and frag[0].fragment and not frag[-1].fragment


def test_progress_notify_only_for_idle_synced_watchers() -> None:
    rig = Rig()
    s = rig.session()
    s.receive(create(b"a", progress_notify=True))
    s.receive(create(b"b"))
    rig.put("c")
    assert s.progress_tick()
    out = drain(s)
    assert [(r.watch_id, r.header.revision, len(r.events)) for r in out] == [(0, 2, 0)]
    rig.put("a")
    drain(s)
    assert not s.progress_tick()  # an event went out since the last tick
    assert s.progress_tick()


# ---------------------------------------------------------------- slow consumers
def test_slow_watcher_turns_victim_and_catches_up_without_gaps() -> None:
    rig = Rig(WatchLimits(buffer_events=3))
    slow, fast = rig.session(), rig.session()
    slow.receive(create(b"a"))
    fast.receive(create(b"a"))
    for i in range(10):
        rig.put("a", str(i))
        fast_out = drain(fast)
        assert evs(fast_out) == [(i + 2, PUT, b"a", str(i).encode())]
    assert rig.hub.victims_total == 1
    w = slow.watchers[0]
    assert w.victim and not w.buffer  # a victim holds nothing: it replays from the store
    out = drain(slow)
    assert [e[0] for e in evs(out)] == list(range(2, 12))
    assert not w.victim and w.synced
    rig.put("a", "live")
    assert evs(drain(slow)) == [(12, PUT, b"a", b"live")]


def test_victim_past_lag_limit_is_cancelled_and_resumable() -> None:
    rig = Rig(WatchLimits(buffer_events=2, max_lag_revisions=5))
    s = rig.session()
    s.receive(create(b"a"))
    rig.put("a")
    assert [e[0] for e in evs(s.take(1))] == [2]  # handed out before the stream stalls
    for _ in range(11):
        rig.put("a")
    assert rig.hub.watcher_count == 1  # id reserved until the cancel is handed out
    out = drain(s)
    assert evs(out) == []  # what it had buffered was dropped when it fell behind
    assert out[-1].canceled and "too slow" in out[-1].cancel_reason and out[-1].watch_id == 0
    assert rig.hub.slow_cancels_total == 1 and rig.hub.watcher_count == 0
    # Resumable: restart from last delivered + 1 gives exactly the rest.
    s.receive(create(b"a", start_revision=3))
    assert [e[0] for e in evs(drain(s))] == list(range(3, 14))


def test_a_victim_costs_writes_nothing_and_holds_no_events() -> None:
    rig = Rig(WatchLimits(buffer_events=4))
    s = rig.session()
    s.receive(create(b"a", b"b"))
    for _ in range(6):
        rig.put("a")
    w = s.watchers[0]
    assert w.victim and not w.buffer and w.buffered_events == 0
    assert not rig.hub._ranges and not rig.hub._by_key  # out of the fan-out index
    for _ in range(20):
        rig.put("a")
    assert not w.buffer
    assert [e[0] for e in evs(drain(s))] == list(range(2, 28))  # every revision, from the store
    assert w.synced and w in rig.hub._ranges  # back in the fan-out
    rig.put("a")
    assert evs(drain(s)) == [(28, PUT, b"a", b"v")]


def test_victim_whose_history_is_compacted_gets_compaction_cancel() -> None:
    rig = Rig(WatchLimits(buffer_events=1))
    s = rig.session()
    s.receive(create(b"a"))
    for _ in range(5):
        rig.put("a")
    rig.write(pb.CompactionRequest(revision=5))
    out = drain(s)
    assert evs(out) == []  # revision 2 was buffered, then dropped: it is compacted now
    assert out[-1].canceled and out[-1].compact_revision == 5 and out[-1].header.revision == 0


def test_close_frees_watchers() -> None:
    rig = Rig()
    s = rig.session()
    for k in (b"a", b"b"):
        s.receive(create(k))
    s.receive(create(b"a", b"z"))
    assert rig.hub.watcher_count == 3
    rig.hub.close(s)
    assert rig.hub.watcher_count == 0 and not rig.hub._by_key and not rig.hub._ranges
    rig.put("a")


# ---------------------------------------------------------------- model test
KEYS = [b"a", b"b", b"c", b"d"]
op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS)),
    st.tuples(st.just("del"), st.sampled_from(KEYS)),
    st.tuples(st.just("txn"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)),
    st.tuples(st.just("delrange"), st.just(b"")),
    st.tuples(st.just("take"), st.integers(0, 3)),
)
watch_spec = st.tuples(
    st.sampled_from([(b"a", b""), (b"b", b"d"), (b"\0", b"\0"), (b"c", b"\0")]),
    st.integers(0, 4),  # start revision
    st.booleans(),  # prev_kv
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op, max_size=40),
    specs=st.lists(watch_spec, min_size=1, max_size=4),
    buffer_events=st.integers(1, 4),
)
def test_model_ordered_unique_atomic_reliable(
    ops: list[tuple[str, object]],
    specs: list[tuple[tuple[bytes, bytes], int, bool]],
    buffer_events: int,
) -> None:
    """Whatever the write pattern and however slowly a session reads, each watcher gets
    exactly the store's history for its range, in order, one revision never split."""
    rig = Rig(WatchLimits(buffer_events=buffer_events, catchup_revisions=2))
    for k in KEYS[:2]:
        rig.put(k)  # revs 2, 3: something to replay
    sessions = [rig.session() for _ in specs]
    got: list[list[pb.WatchResponse]] = [[] for _ in specs]
    for s, ((key, end), start, prev) in zip(sessions, specs, strict=True):
        created = s.receive(create(key, end, start_revision=start, prev_kv=prev))
        assert created[0].created
    for name, arg in ops:
        if name == "put":
            rig.put(arg)  # type: ignore[arg-type]
        elif name == "del":
            rig.delete(arg)  # type: ignore[arg-type]
        elif name == "txn":
            rig.txn_puts(*arg)  # type: ignore[misc]
        elif name == "delrange":
            rig.delete(b"\0", b"\0")
        else:
            i = int(arg) % len(sessions)  # type: ignore[call-overload]
            got[i].extend(sessions[i].take(2))
    history = list(rig.store.history(1, rig.store.committed_rev))
    for i, (s, (_range, start, prev)) in enumerate(zip(sessions, specs, strict=True)):
        got[i].extend(drain(s))
        first = start if start > 0 else 4
        want = [
            (e.kv.mod_revision, e.type, e.kv.key)
            for e in history
            if e.kv.mod_revision >= first and s.watchers[0].matches(e.kv.key)
        ]
        have = [(e.kv.mod_revision, e.type, e.kv.key) for r in got[i] for e in r.events]
        assert have == want
        # Atomic: a revision's events for this watcher sit in one response.
        seen: dict[int, int] = {}
        for n, r in enumerate(got[i]):
            for e in r.events:
                assert seen.setdefault(e.kv.mod_revision, n) == n
                if prev and e.kv.version != 1:
                    assert e.prev_kv.mod_revision < e.kv.mod_revision
                    assert e.prev_kv.key == e.kv.key
