"""The bbolt writer and reader: round trips of every shape, and each kind of damage refused."""

from __future__ import annotations

import os
import random
import struct

import pytest

from metastore_core.storage.bbolt import format as F
from metastore_core.storage.bbolt import writer
from metastore_core.storage.bbolt.reader import BoltReader, Item

PS = F.PAGE_SIZE


def build(buckets: dict[bytes, list[tuple[bytes, bytes]]]) -> bytes:
    sources = [(name, (lambda rows=rows: rows)) for name, rows in sorted(buckets.items())]
    return b"".join(writer.encode(writer.plan(sources)))


def read_all(data: bytes | bytearray) -> dict[bytes, list[tuple[bytes, bytes]]]:
    r = BoltReader(data, len(data))
    out: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for path, item in r.walk():
        if path:
            out[path[0]].append((item.key, item.value))
        else:
            assert item.bucket is not None
            out[item.key] = []
    r.finish()
    return out


def rows(n: int, value_size: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    return [(b"%010d" % i, rnd.randbytes(value_size)) for i in range(n)]


def top(data: bytes | bytearray, name: bytes) -> Item:
    r = BoltReader(data, len(data))
    return next(i for i in r.items(r.root) if i.key == name)


def page_of(data: bytes | bytearray, pgid: int) -> tuple[int, int, int, int]:
    return F.PAGE_HEADER.unpack_from(data, pgid * PS)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "shape",
    [
        {},  # no buckets: one empty root leaf
        {b"empty": []},  # an inline empty bucket, as bbolt's CreateBucket leaves it
        {b"small": rows(3, 10)},  # inline: fits a quarter page
        {b"one-page": rows(20, 100)},  # one leaf page of its own
        {b"deep": rows(20_000, 200)},  # enough leaves for two branch levels
        {b"big": [(b"a", os.urandom(3 * PS)), (b"b", b""), (b"c", os.urandom(PS - 40))]},  # overflow
        {b"k" * F.MAX_KEY: [(b"x" * F.MAX_KEY, b"v")]},  # longest key, as bucket name and key
        {b"a": rows(5, 1), b"b": rows(500, 50), b"c": [], b"d": rows(2, 2000)},
    ],
    ids=["none", "empty", "inline", "one-page", "deep", "overflow", "max-key", "mixed"],
)
def test_what_the_writer_writes_the_reader_reads_back(shape: dict[bytes, list[tuple[bytes, bytes]]]) -> None:
    data = build(shape)
    assert len(data) % PS == 0
    assert read_all(data) == shape
    r = BoltReader(data, len(data))
    assert r.meta.pages * PS == len(data) and not r.meta_problems
    assert r.free_pages == set()


def test_layout_is_bbolts_a_fresh_compacted_database() -> None:
    data = build({b"deep": rows(20_000, 200), b"small": rows(2, 1)})
    r = BoltReader(data, len(data))
    # both meta pages valid, txid parity matching their page, as bbolt's own commits leave them
    m0, _ = F.read_meta(data, 0)
    m1, _ = F.read_meta(data, PS)
    assert m0 is not None and m1 is not None and (m0.txid, m1.txid) == (2, 1)
    assert page_of(data, 2)[1] == F.FREELIST and page_of(data, 2)[2] == 0
    deep = top(data, b"deep").bucket
    assert deep is not None and deep.root != 0
    assert page_of(data, deep.root)[1] == F.BRANCH
    child = F.BRANCH_ELEMENT.unpack_from(data, deep.root * PS + F.HEADER)[2]
    assert page_of(data, child)[1] == F.BRANCH  # two levels of branches
    leaf = F.BRANCH_ELEMENT.unpack_from(data, child * PS + F.HEADER)[2]
    _, flags, count, overflow = page_of(data, leaf)
    assert flags == F.LEAF and overflow == writer.LEAF_PAGES - 1 and count == 72  # 226-byte elements
    small = top(data, b"small").bucket
    assert small is not None and small.root == 0  # inline
    assert r.meta.root == r.meta.pages - 1  # the root bucket's page comes last


def test_plan_and_encode_agree_and_a_changed_source_is_refused() -> None:
    data = rows(300, 50)
    p = writer.plan([(b"b", lambda: data)])
    assert sum(len(x) for x in writer.encode(p, chunk=1000)) == p.size
    assert all(len(x) == 1000 for x in list(writer.encode(p, chunk=1000))[:-1])
    data.append((b"zzz", b"late"))
    with pytest.raises(writer.SourceChanged):
        b"".join(writer.encode(p))
    with pytest.raises(ValueError, match="not ascending"):
        writer.plan([(b"b", lambda: [(b"b", b""), (b"a", b"")])])
    with pytest.raises(ValueError, match="bucket names"):
        writer.plan([(b"b", list), (b"a", list)])


def test_fnv64a_is_the_published_function() -> None:
    # FNV-1a 64 test vectors (draft-eastlake-fnv): "" and "a"
    assert F.fnv64a(b"") == 0xCBF29CE484222325
    assert F.fnv64a(b"a") == 0xAF63DC4C8601EC8C
    assert F.fnv64a(b"foobar") == 0x85944171F73967E8


# ------------------------------------------------------------------ damage


def refused(data: bytes | bytearray, match: str) -> F.BoltError:
    with pytest.raises(F.BoltError, match=match) as info:
        read_all(data)
    return info.value


def put(data: bytearray, offset: int, fmt: str, *values: int) -> None:
    struct.pack_into(fmt, data, offset, *values)


@pytest.fixture(scope="module")
def db() -> bytes:
    return build({b"deep": rows(6000, 30), b"small": rows(2, 1), b"big": [(b"v", os.urandom(2 * PS))]})


def test_truncated_files_name_the_end_they_needed(db: bytes) -> None:
    for cut in (0, 100, PS + 50, len(db) - 1, len(db) - PS):
        err = refused(db[:cut], "truncated")
        assert err.offset <= max(cut, PS)


def test_meta_pages_checksums_and_fallback(db: bytes) -> None:
    bad = bytearray(db)
    bad[F.META_OFFSET + 40] ^= 1  # meta 0's high-water mark: its checksum no longer matches
    r = BoltReader(bad, len(bad))
    assert r.meta.txid == 1 and "checksum" in r.meta_problems[0].reason  # bbolt falls back to meta 1
    bad[PS + F.META_OFFSET + 40] ^= 1
    err = refused(bad, "meta page 0: meta page checksum mismatch")
    assert err.offset == F.META_OFFSET
    bad = bytearray(db)
    bad[16:20] = b"\0\0\0\0"
    bad[PS + 16 : PS + 20] = b"\0\0\0\0"
    refused(bad, "not a bbolt file")


def rewrite_meta(data: bytearray, **changes: int) -> None:
    for page in (0, 1):
        m, _ = F.read_meta(data, page * PS)
        assert m is not None
        fields = {**m.__dict__, **changes}
        data[page * PS : page * PS + PS] = F.Meta(**fields).page(page)


def test_pages_outside_the_file_are_refused(db: bytes) -> None:
    bad = bytearray(db)
    rewrite_meta(bad, root=10**6)
    refused(bad, "root bucket page 1000000 outside")
    bad = bytearray(db)
    rewrite_meta(bad, pages=10**12)  # claims far more than the file: no allocation follows
    refused(bad, "truncated: meta says 1000000000000 pages")
    deep = top(db, b"deep").bucket
    assert deep is not None
    bad = bytearray(db)
    put(bad, deep.root * PS + F.HEADER + 8, "<Q", 1 << 40)  # a branch child far past the end
    err = refused(bad, "points at page 1099511627776, outside")
    assert err.offset == deep.root * PS + F.HEADER


def test_a_page_cycle_or_shared_page_is_refused_not_followed(db: bytes) -> None:
    deep = top(db, b"deep").bucket
    assert deep is not None
    bad = bytearray(db)
    put(bad, deep.root * PS + F.HEADER + 8, "<Q", deep.root)  # the root branch points at itself
    refused(bad, f"page {deep.root} is reached twice")
    bad = bytearray(db)
    second = deep.root * PS + F.HEADER + F.ELEMENT
    first_child = F.BRANCH_ELEMENT.unpack_from(bad, deep.root * PS + F.HEADER)[2]
    put(bad, second + 8, "<Q", first_child)  # two parents share one child
    refused(bad, "reached twice")


def test_oversized_and_misplaced_elements_are_refused(db: bytes) -> None:
    big = top(db, b"big").bucket
    assert big is not None
    leaf = big.root * PS
    for field, value, match in (
        (12, 1 << 31, "lie outside the node"),  # value size far past its page run
        (8, F.MAX_KEY + 1, "key size 32769 outside"),
        (8, 0, "key size 0 outside"),
        (4, 0, "lie outside the node"),  # data on top of the element headers
    ):
        bad = bytearray(db)
        put(bad, leaf + F.HEADER + field, "<I", value)
        err = refused(bad, match)
        assert err.offset == leaf + F.HEADER
    bad = bytearray(db)
    put(bad, leaf + 10, "<H", 0xFFFF)  # more elements than the page run can hold
    refused(bad, "elements overrun")
    bad = bytearray(db)
    put(bad, leaf + 12, "<I", 1 << 30)  # an overflow run past the last page
    refused(bad, "runs past the last page")


def test_wrong_page_ids_types_order_and_unreachable_pages(db: bytes) -> None:
    deep = top(db, b"deep").bucket
    assert deep is not None
    bad = bytearray(db)
    put(bad, deep.root * PS, "<Q", 7)
    refused(bad, f"page {deep.root} says it is page 7")
    bad = bytearray(db)
    put(bad, deep.root * PS + 8, "<H", F.META)
    refused(bad, "has flags 0x4")
    bad = bytearray(db)
    pos = F.BRANCH_ELEMENT.unpack_from(bad, deep.root * PS + F.HEADER)[0]
    bad[deep.root * PS + F.HEADER + pos] = 0xFF  # the branch's first key now sorts after the next
    refused(bad, f"branch page {deep.root}: keys out of order")
    leaf = F.BRANCH_ELEMENT.unpack_from(bad, deep.root * PS + F.HEADER)[2] * PS
    bad = bytearray(db)
    pos = F.LEAF_ELEMENT.unpack_from(bad, leaf + F.HEADER)[1]
    bad[leaf + F.HEADER + pos] = 0xFF  # the first key of a leaf now sorts after the next one
    err = refused(bad, "keys out of order")
    assert err.offset == leaf + F.HEADER + F.ELEMENT
    bad = bytearray(db)
    put(bad, leaf + F.HEADER, "<I", F.BUCKET_LEAF)  # a plain value now claims to be a bucket
    err = refused(bad, "outside pages")
    assert err.offset == leaf + F.HEADER
    # an extra page nobody references and the freelist does not hold
    data = bytearray(db) + bytes(PS)
    rewrite_meta(data, pages=len(data) // PS)
    refused(data, f"page {len(db) // PS} is neither reachable nor free")
    # ... which the freelist can hold
    fl = bytearray(data)
    put(fl, 2 * PS + 10, "<H", 1)
    put(fl, 2 * PS + F.HEADER, "<Q", len(db) // PS)
    assert read_all(fl)
    put(fl, 2 * PS + F.HEADER, "<Q", deep.root)
    refused(fl, "is free but a bucket uses it")


def test_freelist_with_its_count_in_the_first_slot_and_no_freelist_at_all(db: bytes) -> None:
    data = bytearray(db) + bytes(2 * PS)
    rewrite_meta(data, pages=len(data) // PS)
    n = len(db) // PS
    put(data, 2 * PS + 10, "<H", 0xFFFF)
    put(data, 2 * PS + F.HEADER, "<QQQ", 2, n, n + 1)
    r = BoltReader(data, len(data))
    assert r.free_pages == {n, n + 1}
    put(data, 2 * PS + F.HEADER, "<Q", 1 << 50)
    refused(data, "overruns")
    nofl = bytearray(db)
    rewrite_meta(nofl, freelist=F.NO_FREELIST)
    r = BoltReader(nofl, len(nofl))
    assert r.free_pages is None  # as etcd writes its own: unreachable pages count as free
    assert read_all(nofl)
