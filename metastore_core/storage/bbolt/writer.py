"""A streaming bbolt writer: a whole database, page by page, from sorted top-level buckets.

Two passes over the same sources, so the total size is known before the first byte goes out
(the Snapshot stream announces `remaining_bytes` in every message):
  plan    reads every key and value once for its length only: how many elements each leaf
          holds, how many pages it takes, its first key's length (8 bytes a leaf, kept in
          arrays), which buckets are small enough to live inline; from these, every page id;
  encode  reads the sources again and emits the pages in page-id order. A source that changed
          between the two passes is an error, never a bad file.

Branch pages are written in post-order: a branch node is emitted as soon as it is full, right
after its last child, so encoding holds only the open node of each level (a few keys), never
one key per leaf. bbolt does not care where a page sits, only that every page is reachable once.
Leaf nodes are filled up to LEAF_PAGES pages, branch nodes up to one; buckets whose one leaf fits
in a quarter page are stored inline, as bbolt does.

    pages:  0 meta (txid 2) | 1 meta (txid 1) | 2 freelist (empty) |
            bucket "a": leaf leaf .. branch leaf .. branch branch(root) | bucket "b": ... |
            the root bucket's pages (they hold the other buckets' headers)   high-water mark
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from metastore_core.storage.bbolt.format import (
    BRANCH,
    BUCKET_HEADER,
    BUCKET_LEAF,
    ELEMENT,
    FREELIST,
    HEADER,
    LEAF,
    MAX_COUNT,
    MAX_KEY,
    MAX_VALUE,
    PAGE_HEADER,
    PAGE_SIZE,
    Meta,
)

Items = Callable[[], Iterable[tuple[bytes, bytes]]]  # a bucket's pairs in ascending key order
FREELIST_PAGE = 2
FIRST_DATA_PAGE = 3
TXID = 2  # meta 0 holds txid 2 and meta 1 txid 1: each on the page its parity names, as bbolt does
# A leaf node may span this many pages. bbolt writes such nodes itself (a node of up to four
# elements is never split, however large) and reads any; filling four pages instead of one leaves
# ~2 % unused instead of ~22 % with 1 KB values, and 7 % instead of 37 % with 5 KB ones.
LEAF_PAGES = 4


class SourceChanged(RuntimeError):
    """A bucket's pairs differ between the plan and the encode pass."""


def _pages(size: int, page_size: int) -> int:
    return -(-size // page_size)


def _elements(n: int) -> struct.Struct:
    """n element headers as one struct (bbolt's elements are four u32, a pgid counting as two)."""
    st = _ELEMENTS.get(n)
    if st is None:
        st = _ELEMENTS[n] = struct.Struct(f"<{4 * n}I")
    return st


_ELEMENTS: dict[int, struct.Struct] = {}


def _leaf_node(pgid: int, pairs: Sequence[tuple[bytes, bytes]], page_size: int, flags: int = 0) -> bytes:
    """One leaf node: header, elements, then each key and value; padded to whole pages."""
    n = len(pairs)
    fields: list[int] = []
    data: list[bytes] = []
    pos = n * ELEMENT  # from element 0 to the first key
    for key, value in pairs:
        k, v = len(key), len(value)
        fields += (flags, pos, k, v)
        pos += k + v - ELEMENT  # the next element sits one element further on
        data += (key, value)
    end = pos + HEADER + n * ELEMENT
    pages = -(-end // page_size) if n else 1
    head = PAGE_HEADER.pack(pgid, LEAF, n, pages - 1)
    return b"".join((head, _elements(n).pack(*fields), *data, bytes(pages * page_size - end)))


def _branch_node(pgid: int, children: Sequence[tuple[bytes, int]], page_size: int) -> bytes:
    n = len(children)
    fields: list[int] = []
    pos = n * ELEMENT
    for key, child in children:
        fields += (pos, len(key), child & 0xFFFFFFFF, child >> 32)  # pgid u64 as two u32
        pos += len(key) - ELEMENT
    end = pos + HEADER + n * ELEMENT
    pages = _pages(end, page_size)
    head = PAGE_HEADER.pack(pgid, BRANCH, n, pages - 1)
    keys = (k for k, _ in children)
    return b"".join((head, _elements(n).pack(*fields), *keys, bytes(pages * page_size - end)))


def _full(size: int, count: int, more: int, page_size: int) -> bool:
    """Whether a node of `size` bytes and `count` elements is closed rather than given `more`."""
    return count > 0 and (size + more > page_size or count == MAX_COUNT)


class _Branches:
    """The branch levels above a run of leaves, closed and numbered in post-order as children come.

    A child is (first key, page id); in the plan pass the key is b"" and only its length counts
    (`klen`), so both passes make the same nodes and page ids. Closed nodes are handed to `emit`
    (rendered in the encode pass) the moment they close: right after their last child.
    """

    def __init__(self, next_page: int, page_size: int, emit: Callable[[bytes], None] | None) -> None:
        self.next_page = next_page
        self._ps = page_size
        self._emit = emit
        # per level: the open node's children (key, klen, pgid) and its byte size
        self._open: list[list[tuple[bytes, int, int]]] = []
        self._size: list[int] = []

    def add(self, key: bytes, klen: int, pgid: int, level: int = 0) -> None:
        if level == len(self._open):
            self._open.append([])
            self._size.append(HEADER)
        node = self._open[level]
        if _full(self._size[level], len(node), ELEMENT + klen, self._ps):
            self._close(level)
            node = self._open[level]
        node.append((key, klen, pgid))
        self._size[level] += ELEMENT + klen

    def _close(self, level: int) -> None:
        node = self._open[level]
        pgid = self.next_page
        self.next_page += _pages(self._size[level], self._ps)
        if self._emit is not None:
            self._emit(_branch_node(pgid, [(k, p) for k, _, p in node], self._ps))
        self._open[level] = []
        self._size[level] = HEADER
        first_key, klen, _ = node[0]
        self.add(first_key, klen, pgid, level + 1)

    def finish(self) -> int:
        """Close what is open, bottom up; the root page (a lone child needs no branch above it)."""
        level = 0
        while True:
            node = self._open[level]
            if level == len(self._open) - 1 and len(node) == 1:
                return node[0][2]
            self._close(level)
            level += 1


@dataclass
class _BucketPlan:
    name: bytes
    items: Items
    first_page: int
    inline: bytes | None = None  # the whole bucket value when it lives inline
    counts: array = field(default_factory=lambda: array("H"))  # elements per leaf
    sizes: array = field(default_factory=lambda: array("I"))  # pages per leaf
    key_lens: array = field(default_factory=lambda: array("H"))  # first key's length per leaf
    root: int = 0
    end_page: int = 0  # the first page after this bucket's


@dataclass
class Plan:
    """Every page id and size, decided before the first byte is written."""

    page_size: int
    buckets: list[_BucketPlan]
    root_pages: list[bytes]
    root: int
    pages: int  # the high-water mark

    @property
    def size(self) -> int:
        return self.pages * self.page_size


def _check(name: bytes, key: bytes, value: bytes, prev: bytes) -> None:
    if not 0 < len(key) <= MAX_KEY or len(value) > MAX_VALUE:
        raise ValueError(f"bucket {name!r}: key of {len(key)} or value of {len(value)} bytes")
    if key <= prev:
        raise ValueError(f"bucket {name!r}: keys not ascending at {key[:40]!r}")


def plan(buckets: Iterable[tuple[bytes, Items]], page_size: int = PAGE_SIZE) -> Plan:
    """Lay out every page of a database holding these top-level buckets (names ascending)."""
    sources = list(buckets)
    names = [n for n, _ in sources]
    if names != sorted(set(names)) or not all(0 < len(n) <= MAX_KEY for n in names):
        raise ValueError("bucket names must be unique, ascending and 1..32768 bytes long")
    plans: list[_BucketPlan] = []
    next_page = FIRST_DATA_PAGE
    for name, items in sources:
        bp = _plan_bucket(name, items, next_page, page_size)
        next_page = bp.end_page
        plans.append(bp)
    root_pairs = [
        (bp.name, bp.inline if bp.inline is not None else BUCKET_HEADER.pack(bp.root, 0)) for bp in plans
    ]
    rendered: list[bytes] = []
    root, pages = _root_tree(root_pairs, next_page, page_size, rendered.append)
    return Plan(page_size, plans, rendered, root, pages)


def _plan_bucket(name: bytes, items: Items, first_page: int, page_size: int) -> _BucketPlan:
    """One pass over a bucket, lengths only: its leaves and page ids, or its inline value."""
    bp = _BucketPlan(name, items, first_page, end_page=first_page)
    inline_limit = page_size // 4  # bbolt inlines a bucket whose single leaf fits in this
    leaf_limit = LEAF_PAGES * page_size
    small: list[tuple[bytes, bytes]] | None = []
    count, size, total, klen = 0, HEADER, HEADER, 0
    prev = b""
    for key, value in items():
        k, v = len(key), len(value)
        if key <= prev or k > MAX_KEY or v > MAX_VALUE:
            _check(name, key, value, prev)
        prev = key
        s = ELEMENT + k + v
        total += s
        if small is not None:
            small.append((key, value))
            if total > inline_limit:
                small = None
        if count and (size + s > leaf_limit or count == MAX_COUNT):  # _full, inlined: per record
            bp.counts.append(count)
            bp.sizes.append(_pages(size, page_size))
            bp.key_lens.append(klen)
            count, size = 0, HEADER
        if count == 0:
            klen = k
        count += 1
        size += s
    if small is not None:
        bp.inline = BUCKET_HEADER.pack(0, 0) + _leaf_node(0, small, page_size)[:total]
        return bp
    bp.counts.append(count)
    bp.sizes.append(_pages(size, page_size))
    bp.key_lens.append(klen)
    tree = _Branches(first_page, page_size, None)
    for pages, klen in zip(bp.sizes, bp.key_lens, strict=True):
        pgid = tree.next_page
        tree.next_page += pages
        tree.add(b"", klen, pgid)
    bp.root = tree.finish()
    bp.end_page = tree.next_page
    return bp


def _split(sizes: Iterable[int], page_size: int) -> Iterator[int]:
    """Element counts of the nodes a run of element sizes packs into, each as full as a page allows."""
    count, size = 0, HEADER
    for s in sizes:
        if _full(size, count, s, page_size):
            yield count
            count, size = 0, HEADER
        count += 1
        size += s
    yield count


def _root_tree(
    pairs: list[tuple[bytes, bytes]], next_page: int, page_size: int, emit: Callable[[bytes], None]
) -> tuple[int, int]:
    """The root bucket's pages, handed to emit in page order; (its root page, the next free page)."""
    tree = _Branches(next_page, page_size, emit)
    at = 0
    for count in _split((ELEMENT + len(k) + len(v) for k, v in pairs), page_size):
        group = pairs[at : at + count]
        at += count
        pgid = tree.next_page
        page = _leaf_node(pgid, group, page_size, BUCKET_LEAF)
        emit(page)
        tree.next_page += len(page) // page_size
        first = group[0][0] if group else b""
        tree.add(first, len(first), pgid)
    return tree.finish(), tree.next_page


def encode(p: Plan, chunk: int = 32 * 1024) -> Generator[bytes, None, None]:
    """The database in blobs of `chunk` bytes (the last may be shorter), pages in id order."""
    return _counted(p, _pages_of(p, chunk))


def _pages_of(p: Plan, chunk: int) -> Generator[bytes, None, None]:
    ps = p.page_size
    buf = bytearray()
    buf += Meta(ps, p.root, FREELIST_PAGE, p.pages, TXID).page(0)
    buf += Meta(ps, p.root, FREELIST_PAGE, p.pages, TXID - 1).page(1)
    buf += PAGE_HEADER.pack(FREELIST_PAGE, FREELIST, 0, 0) + bytes(ps - HEADER)
    for bp in p.buckets:
        if bp.inline is not None:
            continue
        tree = _Branches(bp.first_page, ps, buf.extend)
        items = iter(bp.items())
        for count, pages in zip(bp.counts, bp.sizes, strict=True):
            pairs = list(islice(items, count))
            if len(pairs) != count:
                raise SourceChanged(f"bucket {bp.name!r} shrank between the passes")
            pgid = tree.next_page
            node = _leaf_node(pgid, pairs, ps)
            if len(node) != pages * ps:
                raise SourceChanged(f"bucket {bp.name!r} changed between the passes")
            buf += node
            tree.next_page += pages
            tree.add(pairs[0][0], len(pairs[0][0]), pgid)
            if len(buf) >= chunk:
                yield from _cut(buf, chunk)
        if next(items, None) is not None:
            raise SourceChanged(f"bucket {bp.name!r} grew between the passes")
        if (tree.finish(), tree.next_page) != (bp.root, bp.end_page):
            raise SourceChanged(f"bucket {bp.name!r} changed between the passes")
    for page in p.root_pages:
        buf += page
    yield from _cut(buf, chunk)
    if buf:
        yield bytes(buf)


def _counted(p: Plan, blobs: Iterator[bytes]) -> Generator[bytes, None, None]:
    """blobs, checked to add up to the planned size."""
    sent = 0
    for blob in blobs:
        sent += len(blob)
        yield blob
    if sent != p.size:
        raise SourceChanged(f"wrote {sent} bytes, planned {p.size}")


def _cut(buf: bytearray, chunk: int) -> Iterator[bytes]:
    while len(buf) >= chunk:
        out = bytes(buf[:chunk])
        del buf[:chunk]
        yield out
