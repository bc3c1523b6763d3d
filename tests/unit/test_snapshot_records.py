"""Snapshot records with valid checksums but bad contents are refused, at the record's offset.

Files are crafted with snapshot.compose, so every CRC and the SHA-256 trailer are right: only
the contents are wrong. A time-bounded fuzzer then mutates records of a real store's snapshot:
whatever verify accepts must load and take a write, whatever it refuses must name an offset.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable

import pytest

from metastore_core.engine.ranges import range_at
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import layout as L
from metastore_core.storage import restoring
from metastore_core.storage import snapshot as S
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine

Pairs = list[tuple[bytes, bytes]]
LEASE = 0x1234
FUZZ_SECONDS = 3.0


def base() -> tuple[S.Header, Pairs]:
    """A real store's snapshot: puts, deletes, a lease with keys on it, a compaction."""
    e = Engine(MemoryStorage())
    rnd = random.Random(7)
    e.write(pb.LeaseGrantRequest(ID=LEASE, TTL=60))
    for i in range(120):
        key = b"key/%02d" % rnd.randrange(25)
        if rnd.random() < 0.2:
            e.write(pb.DeleteRangeRequest(key=key))
        else:
            e.write(pb.PutRequest(key=key, value=b"v%d" % i, lease=LEASE if i % 5 == 0 else 0))
    e.write(pb.CompactionRequest(revision=40))
    buf = io.BytesIO()
    S.write(e.storage.view(), buf)  # type: ignore[attr-defined]
    items = list(S.read(io.BytesIO(buf.getvalue())))
    header = items[0]
    assert isinstance(header, S.Header)
    return header, [item for item in items[1:] if isinstance(item, tuple)]


HEADER, PAIRS = base()


def offset_of(pairs: Pairs, i: int) -> int:
    """Where record i starts in a composed file."""
    return S.HEADER_LEN + sum(9 + len(k) + len(v) + 4 for k, v in pairs[:i])


def refused(pairs: Pairs, header: S.Header = HEADER) -> S.SnapshotError:
    with pytest.raises(S.SnapshotError) as info:
        S.verify(io.BytesIO(S.compose(header, pairs)))
    return info.value


def changes(pairs: Pairs) -> list[int]:
    """Indexes of the MVCC change records (puts first-class, tombstones too)."""
    return [i for i, (k, _) in enumerate(pairs) if k[:1] == L.REV_PREFIX]


def live_put_on_lease(pairs: Pairs) -> int:
    """Index of the newest record of a live key attached to LEASE."""
    newest: dict[bytes, int] = {}
    for i in changes(pairs):
        newest[KeyValue.FromString(pairs[i][1]).key] = i
    return next(
        i
        for i in newest.values()
        if len(pairs[i][0]) == 17 and KeyValue.FromString(pairs[i][1]).lease == LEASE
    )


def with_kv(pairs: Pairs, i: int, **fields: object) -> Pairs:
    kv = KeyValue.FromString(pairs[i][1])
    for name, value in fields.items():
        setattr(kv, name, value)
    out = list(pairs)
    out[i] = (pairs[i][0], kv.SerializeToString())
    return out


def test_the_base_snapshot_is_valid() -> None:
    assert S.verify(io.BytesIO(S.compose(HEADER, PAIRS))).records == len(PAIRS)


def test_an_undecodable_keyvalue_is_refused_at_its_record() -> None:
    i = changes(PAIRS)[3]
    pairs = list(PAIRS)
    pairs[i] = (pairs[i][0], b"\xff\xff\xff\x0f")
    err = refused(pairs)
    assert "does not decode" in err.reason and err.offset == offset_of(pairs, i)


def test_a_revision_key_of_the_wrong_length_is_refused_at_its_record() -> None:
    i = changes(PAIRS)[5]
    pairs = list(PAIRS)
    pairs[i] = (pairs[i][0] + b"x", pairs[i][1])
    err = refused(pairs)
    assert "malformed" in err.reason and err.offset == offset_of(pairs, i)


def test_revision_2_to_the_63_is_refused_at_its_record() -> None:
    i = changes(PAIRS)[-1]
    pairs = list(PAIRS)
    pairs[i] = (L.rev_key(1 << 63, 0), pairs[i][1])
    err = refused(pairs)
    assert "out of range" in err.reason and err.offset == offset_of(pairs, i)


def test_records_out_of_revision_order_are_refused() -> None:
    a, b = changes(PAIRS)[6:8]
    pairs = list(PAIRS)
    pairs[a], pairs[b] = pairs[b], pairs[a]
    err = refused(pairs)
    assert "not after the one before it" in err.reason and err.offset == offset_of(pairs, b)


def test_a_key_on_a_lease_the_snapshot_lacks_is_refused_at_the_key() -> None:
    i = live_put_on_lease(PAIRS)
    pairs = [p for p in PAIRS if p[0] != L.lease_key(LEASE)]
    err = refused(pairs)
    assert f"lease {LEASE:#x}, which is absent" in err.reason and err.offset == offset_of(pairs, i)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"mod_revision": 5}, "mod_revision"),
        ({"key": b""}, "KeyValue key"),
        ({"lease": -1}, "lease -1"),
        ({"version": 0}, "version 0"),
        ({"create_revision": 1 << 40}, "create_revision"),
    ],
    ids=["mod-revision", "empty-key", "negative-lease", "version-0", "create-after-mod"],
)
def test_keyvalue_fields_that_break_the_model_are_refused(fields: dict[str, object], reason: str) -> None:
    i = changes(PAIRS)[-2]
    err = refused(with_kv(PAIRS, i, **fields))
    assert reason in err.reason and err.offset == offset_of(PAIRS, i)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(L.lease_value(0, 0), "TTL 0"), (L.lease_value(60, -1), "remaining -1"), (b"\0" * 15, "15 bytes")],
    ids=["ttl-0", "remaining-negative", "short"],
)
def test_bad_lease_records_are_refused(value: bytes, reason: str) -> None:
    i = next(i for i, (k, _) in enumerate(PAIRS) if k == L.lease_key(LEASE))
    pairs = list(PAIRS)
    pairs[i] = (pairs[i][0], value)
    err = refused(pairs)
    assert reason in err.reason and err.offset == offset_of(pairs, i)


def test_foreign_records_and_a_wrong_header_revision_are_refused() -> None:
    for key in (L.alarm_key(1, 1), b"zebra", L.META_CONSISTENT_INDEX, L.USER_PREFIX + b"root"):
        err = refused(sorted([*PAIRS, (key, b"\x01")]))
        assert repr(key)[:10] in err.reason or "auth record" in err.reason, err
    err = refused(PAIRS, S.Header(HEADER.revision + 1, *list(vars(HEADER).values())[1:]))
    assert "header revision" in err.reason


# ------------------------------------------------------------------ the fuzzer
EDGES = (0, 1, -1, 2, 39, 40, 41, (1 << 31), (1 << 62), (1 << 63) - 1)


def _mutations(rnd: random.Random) -> list[Callable[[Pairs], Pairs]]:
    def pick(pairs: Pairs, prefix: bytes = b"") -> int:
        return rnd.choice([i for i, (k, _) in enumerate(pairs) if k.startswith(prefix)] or [0])

    def kv_field(pairs: Pairs) -> Pairs:
        i = pick(pairs, L.REV_PREFIX)
        name = rnd.choice(["create_revision", "mod_revision", "version", "lease"])
        try:
            return with_kv(pairs, i, **{name: rnd.choice(EDGES)})
        except Exception:  # the record no longer decodes: leave it
            return pairs

    def value_bytes(pairs: Pairs) -> Pairs:
        i = pick(pairs)
        v = bytearray(pairs[i][1])
        how = rnd.randrange(3)
        if how == 0 and v:
            v[rnd.randrange(len(v))] ^= 1 << rnd.randrange(8)
        elif how == 1:
            del v[rnd.randrange(len(v) + 1) :]
        else:
            v += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 4)))
        out = list(pairs)
        out[i] = (pairs[i][0], bytes(v))
        return out

    def storage_key(pairs: Pairs) -> Pairs:
        i = pick(pairs)
        k = bytearray(pairs[i][0])
        how = rnd.randrange(3)
        if how == 0:
            k[rnd.randrange(len(k))] ^= 1 << rnd.randrange(8)
        elif how == 1 and len(k) == 17:
            k[1:9] = (rnd.choice(EDGES) % (1 << 64)).to_bytes(8, "big")
        else:
            k = k[: rnd.randrange(1, len(k) + 1)] if rnd.random() < 0.5 else k + b"t"
        out = list(pairs)
        out[i] = (bytes(k), pairs[i][1])
        return out

    def drop(pairs: Pairs) -> Pairs:
        i = pick(pairs)
        return pairs[:i] + pairs[i + 1 :]

    def duplicate(pairs: Pairs) -> Pairs:
        i = pick(pairs)
        return [*pairs[: i + 1], pairs[i], *pairs[i + 1 :]]

    def swap(pairs: Pairs) -> Pairs:
        i = pick(pairs)
        j = min(i + 1, len(pairs) - 1)
        out = list(pairs)
        out[i], out[j] = out[j], out[i]
        return out

    def alien(pairs: Pairs) -> Pairs:
        key = rnd.choice(
            [L.alarm_key(1, 2), b"q", L.META_COMPACT_REV, L.META_HEALTH_PROBE, L.lease_key(77), b"r" + b"x"]
        )
        value = rnd.choice([b"", L.lease_value(60, 0), b"\x0a\x01x", L.u64(5)])
        return sorted([*pairs, (key, value)])

    return [kv_field, kv_field, value_bytes, storage_key, drop, duplicate, swap, alien]


def _loads_and_takes_a_write(header: S.Header, pairs: Pairs) -> None:
    storage = MemoryStorage()
    meta = restoring.identity(
        cluster_id=header.cluster_id,
        member_id=1,
        raft_term=header.raft_term,
        consistent_index=header.consistent_index,
        compact=header.compact_revision,
        crc=header.record_crc,
    )
    storage.write([*pairs, *meta])
    e = Engine(storage)
    assert e.store.committed_rev == header.revision
    resp = e.write(pb.PutRequest(key=b"after/restore", value=b"ok"))
    assert resp.header.revision == header.revision + 1
    everything = pb.RangeRequest(key=b"\0", range_end=b"\0")
    range_at(e.store, everything, e.store.committed_rev)
    for _ in e.store.history(max(e.store.compact_rev, 1), e.store.committed_rev):
        pass


def test_fuzzed_records_are_refused_with_an_offset_or_load_and_take_writes() -> None:
    rnd = random.Random(20261127)
    mutations = _mutations(rnd)
    seen = {"accepted": 0, "refused": 0}
    deadline = time.monotonic() + FUZZ_SECONDS
    n = 0
    while time.monotonic() < deadline and n < 20_000:
        n += 1
        pairs = PAIRS
        done = []
        for _ in range(rnd.randrange(1, 3)):
            m = rnd.choice(mutations)
            pairs = m(pairs)
            done.append(m.__name__)
        data = S.compose(HEADER, pairs)
        try:
            S.verify(io.BytesIO(data))
        except S.SnapshotError as exc:
            assert S.HEADER_LEN - 32 <= exc.offset < len(data), (done, exc)
            seen["refused"] += 1
            continue
        seen["accepted"] += 1
        try:
            _loads_and_takes_a_write(HEADER, pairs)
        except Exception as exc:  # verify let through a file the daemon cannot live with
            raise AssertionError(f"accepted after {done}, then: {exc!r}") from exc
    print(n, seen)
    assert seen["accepted"] > 20 and seen["refused"] > 200, seen
