"""A streaming bbolt writer: a whole database, page by page, from sorted top-level buckets.

Two passes over the same sources, so the total size is known before the first byte goes out
(the Snapshot stream announces `remaining_bytes` in every message):
  plan    reads every key and value once for its size: how many elements each leaf holds and
          how many pages it takes, the branch pages above the leaves (only their first keys are
          kept), which buckets are small enough to live inline, and so every page id;
  encode  reads the sources again and emits the pages in page-id order: two meta pages, an
          empty freelist, each bucket's leaves then its branches, and last the root bucket's
          pages (they hold the other buckets' headers). A source that changed between the two
          passes is an error, never a bad file.

The file is laid out as bbolt leaves a freshly compacted database: leaves filled as full as a page
allows, no free pages, each bucket's pages together. Buckets whose one leaf fits in a quarter page
are stored inline, as bbolt does.

    pages:  0 meta (txid 2) | 1 meta (txid 1) | 2 freelist | bucket "a": leaves, branches |
            bucket "b": ... | root bucket: leaves, branches          high-water mark = page count
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from metastore_core.storage.bbolt.format import (
    BRANCH,
    BRANCH_ELEMENT,
    BUCKET_HEADER,
    BUCKET_LEAF,
    ELEMENT,
    FREELIST,
    HEADER,
    LEAF,
    LEAF_ELEMENT,
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


class SourceChanged(RuntimeError):
    """A bucket's pairs differ between the plan and the encode pass."""


@dataclass
class _BucketPlan:
    name: bytes
    items: Items
    inline: bytes | None = None  # the whole bucket value when it lives inline
    leaves: list[tuple[int, int]] = field(default_factory=list)  # (elements, pages) per leaf
    first_page: int = 0
    branch_pages: list[bytes] = field(default_factory=list)
    root: int = 0


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


def _pages(size: int, page_size: int) -> int:
    return -(-size // page_size)


def _leaf_node(pgid: int, pairs: list[tuple[int, bytes, bytes]], page_size: int) -> bytes:
    """One leaf node: header, elements, then each key and value; padded to whole pages."""
    n = len(pairs)
    elements = bytearray()
    data: list[bytes] = []
    at = HEADER + n * ELEMENT  # where the next key goes
    for i, (flags, key, value) in enumerate(pairs):
        elements += LEAF_ELEMENT.pack(flags, at - HEADER - i * ELEMENT, len(key), len(value))
        at += len(key) + len(value)
        data += (key, value)
    pages = _pages(at, page_size) if n else 1
    head = PAGE_HEADER.pack(pgid, LEAF, n, pages - 1)
    return b"".join((head, elements, *data, bytes(pages * page_size - at)))


def _branch_node(pgid: int, children: list[tuple[bytes, int]], page_size: int) -> bytes:
    n = len(children)
    elements = bytearray()
    at = HEADER + n * ELEMENT
    for i, (key, child) in enumerate(children):
        elements += BRANCH_ELEMENT.pack(at - HEADER - i * ELEMENT, len(key), child)
        at += len(key)
    pages = _pages(at, page_size)
    head = PAGE_HEADER.pack(pgid, BRANCH, n, pages - 1)
    return b"".join((head, elements, *(k for k, _ in children), bytes(pages * page_size - at)))


def _split(sizes: Iterable[int], page_size: int) -> Iterator[int]:
    """Element counts of the nodes a run of element sizes packs into, each as full as a page allows."""
    count, size = 0, HEADER
    for s in sizes:
        if count and (size + s > page_size or count == MAX_COUNT):
            yield count
            count, size = 0, HEADER
        count += 1
        size += s
    if count:
        yield count


def _branches(
    children: list[tuple[bytes, int]], next_page: int, page_size: int
) -> tuple[list[bytes], int, int]:
    """Branch levels over (first key, page) children: (pages rendered, root page, next free page)."""
    rendered: list[bytes] = []
    while len(children) > 1:
        parents: list[tuple[bytes, int]] = []
        at = 0
        for count in _split((ELEMENT + len(k) for k, _ in children), page_size):
            group = children[at : at + count]
            at += count
            page = _branch_node(next_page, group, page_size)
            rendered.append(page)
            parents.append((group[0][0], next_page))
            next_page += len(page) // page_size
        children = parents
    return rendered, children[0][1], next_page


def _checked(items: Iterable[tuple[bytes, bytes]], name: bytes) -> Iterator[tuple[bytes, bytes]]:
    prev = b""
    for key, value in items:
        if not 0 < len(key) <= MAX_KEY or len(value) > MAX_VALUE:
            raise ValueError(f"bucket {name!r}: key of {len(key)} or value of {len(value)} bytes")
        if key <= prev:
            raise ValueError(f"bucket {name!r}: keys not ascending at {key[:40]!r}")
        prev = key
        yield key, value


def plan(buckets: Iterable[tuple[bytes, Items]], page_size: int = PAGE_SIZE) -> Plan:
    """Lay out every page of a database holding these top-level buckets (names ascending)."""
    sources = list(buckets)
    plans: list[_BucketPlan] = []
    next_page = FIRST_DATA_PAGE
    names = [n for n, _ in sources]
    if names != sorted(set(names)) or not all(0 < len(n) <= MAX_KEY for n in names):
        raise ValueError("bucket names must be unique, ascending and 1..32768 bytes long")
    for name, items in sources:
        bp = _plan_bucket(name, items, next_page, page_size)
        if bp.inline is None:
            next_page = _after(bp, page_size)
        plans.append(bp)
    root_pairs = [
        (BUCKET_LEAF, bp.name, bp.inline if bp.inline is not None else BUCKET_HEADER.pack(bp.root, 0))
        for bp in plans
    ]
    root_pages, root, pages = _root_tree(root_pairs, next_page, page_size)
    return Plan(page_size, plans, root_pages, root, pages)


def _plan_bucket(name: bytes, items: Items, first_page: int, page_size: int) -> _BucketPlan:
    """One pass over a bucket: its leaves (elements, pages), their first keys, or its inline value."""
    bp = _BucketPlan(name, items, first_page=first_page)
    inline_limit = page_size // 4  # bbolt inlines a bucket whose single leaf fits in this
    small: list[tuple[int, bytes, bytes]] | None = []
    first_keys: list[bytes] = []
    count, size, total = 0, HEADER, HEADER
    for key, value in _checked(items(), name):
        s = ELEMENT + len(key) + len(value)
        total += s
        if small is not None:
            small.append((0, key, value))
            if total > inline_limit:
                small = None
        if count and (size + s > page_size or count == MAX_COUNT):
            bp.leaves.append((count, _pages(size, page_size)))
            count, size = 0, HEADER
        if count == 0:
            first_keys.append(key)
        count += 1
        size += s
    if small is not None:
        bp.inline = BUCKET_HEADER.pack(0, 0) + _leaf_node(0, small, page_size)[:total]
        return bp
    bp.leaves.append((count, _pages(size, page_size)))
    children = list(zip(first_keys, _leaf_ids(bp), strict=True))
    bp.branch_pages, bp.root, _ = _branches(children, _leaf_ids(bp)[-1] + bp.leaves[-1][1], page_size)
    return bp


def _after(bp: _BucketPlan, page_size: int) -> int:
    """The first page after bucket bp's leaves and branches."""
    return bp.first_page + sum(p for _, p in bp.leaves) + sum(len(b) // page_size for b in bp.branch_pages)


def _leaf_ids(bp: _BucketPlan) -> list[int]:
    ids, page = [], bp.first_page
    for _, pages in bp.leaves:
        ids.append(page)
        page += pages
    return ids


def _root_tree(
    pairs: list[tuple[int, bytes, bytes]], next_page: int, page_size: int
) -> tuple[list[bytes], int, int]:
    """The root bucket's pages (leaves, then branches), its root page and the next free page."""
    rendered: list[bytes] = []
    children: list[tuple[bytes, int]] = []
    at = 0
    counts = _split((ELEMENT + len(k) + len(v) for _, k, v in pairs), page_size) if pairs else iter([0])
    for count in counts:
        group = pairs[at : at + count]
        at += count
        page = _leaf_node(next_page, group, page_size)
        rendered.append(page)
        children.append((group[0][1] if group else b"", next_page))
        next_page += len(page) // page_size
    branch_pages, root, next_page = _branches(children, next_page, page_size)
    return rendered + branch_pages, root, next_page


def encode(p: Plan, chunk: int = 32 * 1024) -> Generator[bytes, None, None]:
    """The database in blobs of `chunk` bytes (the last may be shorter), pages in id order."""
    ps = p.page_size
    buf = bytearray()
    meta = Meta(ps, p.root, FREELIST_PAGE, p.pages, TXID)
    buf += meta.page(0)
    buf += Meta(ps, p.root, FREELIST_PAGE, p.pages, TXID - 1).page(1)
    buf += PAGE_HEADER.pack(FREELIST_PAGE, FREELIST, 0, 0) + bytes(ps - HEADER)
    written = FIRST_DATA_PAGE
    for bp in p.buckets:
        if bp.inline is not None:
            continue
        items = iter(bp.items())
        for count, pages in bp.leaves:
            pairs = []
            for _ in range(count):
                pair = next(items, None)
                if pair is None:
                    raise SourceChanged(f"bucket {bp.name!r} shrank between the passes")
                pairs.append((0, *pair))
            node = _leaf_node(written, pairs, ps)
            if len(node) != pages * ps:
                raise SourceChanged(f"bucket {bp.name!r} changed between the passes")
            buf += node
            written += pages
            if len(buf) >= chunk:
                yield from _cut(buf, chunk)
        if next(items, None) is not None:
            raise SourceChanged(f"bucket {bp.name!r} grew between the passes")
        for page in bp.branch_pages:
            buf += page
            written += len(page) // ps
    for page in p.root_pages:
        buf += page
        written += len(page) // ps
    if written != p.pages:
        raise SourceChanged(f"wrote {written} pages, planned {p.pages}")
    yield from _cut(buf, chunk)
    if buf:
        yield bytes(buf)


def _cut(buf: bytearray, chunk: int) -> Iterator[bytes]:
    while len(buf) >= chunk:
        out = bytes(buf[:chunk])
        del buf[:chunk]
        yield out
