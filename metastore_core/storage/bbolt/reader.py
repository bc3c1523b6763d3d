"""A bbolt reader that trusts nothing it reads.

Every page id, element position and size is checked against the page it sits in and the file
before it is used, so a damaged file ends in a BoltError naming the byte offset of the fault,
never in an IndexError, a hang or an allocation the file's size does not bound:
- a page id at or past the high-water mark, or a page run past the end of the data: refused;
- each page is reached at most once in a walk (a bitmap of the pages), so a cycle or a page
  shared by two parents is refused when it is met the second time, and a walk costs at most
  one visit per page;
- tree depth and bucket nesting are capped, element positions and sizes must stay inside their
  node, keys are non-empty, at most MAX_KEY long and strictly ascending within a bucket;
- `finish` then checks what bbolt's tx.Check checks: every page below the high-water mark is
  reachable or free, and no free page is in use.

`data` is any bytes-like object of the database bytes (an mmap of a file is the usual one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
    MAX_KEY,
    MAX_PAGE_SIZE,
    META_OFFSET,
    MIN_PAGE_SIZE,
    NO_FREELIST,
    PAGE_HEADER,
    PAGE_SIZE,
    U64,
    BoltError,
    Data,
    Meta,
    read_meta,
)

MAX_DEPTH = 64  # a B+tree over 2**64 pages with two children per branch is no deeper
MAX_NESTING = 16  # buckets inside buckets (etcd uses one level)
PROGRESS_EVERY = 256  # pages between progress calls

_INUSE = 1
_FREE = 2


@dataclass(frozen=True)
class Bucket:
    """Where a bucket's tree lives: a root page, or an inline leaf page inside a value."""

    root: int  # 0 for an inline bucket
    inline: int = 0  # offset of the inline page in the data
    inline_end: int = 0
    sequence: int = 0
    depth: int = 0  # nesting: 0 for the root bucket
    ref: int = 0  # offset of what points at it (the meta page, or the element naming it)


@dataclass(frozen=True)
class Item:
    """One leaf element: a key and its value, or a key naming a nested bucket."""

    key: bytes
    value: bytes  # the raw value (for a bucket: its header and any inline page)
    offset: int  # of the element's header in the data
    bucket: Bucket | None = None


class BoltReader:
    """Walks a bbolt database held in `data` (the first `size` bytes are the database)."""

    def __init__(self, data: Data, size: int, progress: Callable[[int], None] | None = None) -> None:
        self._data = data
        self.size = size
        self._progress = progress
        self._visited = 0
        self.meta, self.meta_problems = self._choose_meta()
        self.page_size = self.meta.page_size
        self.pages = self.meta.pages
        self._state = bytearray(self.pages)  # _INUSE or _FREE per page, bounded by the file size
        self._state[0] = self._state[1] = _INUSE
        self.free_pages = self._read_freelist()

    # ------------------------------------------------------------------ meta and freelist
    def _choose_meta(self) -> tuple[Meta, list[BoltError]]:
        if self.size < 2 * MIN_PAGE_SIZE:
            raise BoltError(f"truncated: {self.size} bytes cannot hold two meta pages", 0)
        first, why0 = read_meta(self._data, 0)
        # bbolt takes the page size from meta 0; with meta 0 damaged it assumes its default
        page_size = first.page_size if first is not None else PAGE_SIZE
        if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
            raise BoltError(f"implausible page size {page_size}", META_OFFSET + 8)
        problems: list[BoltError] = []
        if first is None:
            problems.append(BoltError(f"meta page 0: {why0}", META_OFFSET))
        second: Meta | None = None
        if 2 * page_size <= self.size:
            second, why1 = read_meta(self._data, page_size)
            if second is None:
                problems.append(BoltError(f"meta page 1: {why1}", page_size + META_OFFSET))
            elif second.page_size != page_size:
                problems.append(BoltError("meta page 1: page size differs from meta page 0", page_size + 24))
                second = None
        else:
            problems.append(BoltError("truncated: no room for meta page 1", page_size))
        valid = [m for m in (first, second) if m is not None]
        if not valid:
            raise problems[0]
        meta = max(valid, key=lambda m: m.txid)
        self.meta_at = META_OFFSET if meta is first else page_size + META_OFFSET
        self._check_meta_fields(meta, self.meta_at)
        return meta, problems

    def _check_meta_fields(self, m: Meta, where: int) -> None:
        need = m.pages * m.page_size
        if m.pages < 3:
            raise BoltError(f"meta says {m.pages} pages: too few for a database", where + 40)
        if need > self.size:
            raise BoltError(
                f"truncated: meta says {m.pages} pages of {m.page_size} bytes ({need} bytes), "
                f"the file holds {self.size}",
                self.size,
            )
        if not 2 <= m.root < m.pages:
            raise BoltError(f"root bucket page {m.root} outside pages 2..{m.pages - 1}", where + 16)
        if m.freelist != NO_FREELIST and not 2 <= m.freelist < m.pages:
            raise BoltError(f"freelist page {m.freelist} outside pages 2..{m.pages - 1}", where + 32)

    def _read_freelist(self) -> set[int] | None:
        """The free page ids (None when the file keeps no freelist: bbolt rebuilds it on open)."""
        m = self.meta
        if m.freelist == NO_FREELIST:
            return None
        start, end = self._claim(m.freelist, FREELIST, "the freelist", self.meta_at + 32)
        count = PAGE_HEADER.unpack_from(self._data, start)[2]
        first = start + HEADER
        if count == 0xFFFF:  # the real count is the first id slot
            count = U64.unpack_from(self._data, first)[0]
            first += U64.size
        if first + count * U64.size > end:
            raise BoltError(f"freelist of {count} ids overruns its {end - start}-byte page run", start)
        free: set[int] = set()
        for i in range(count):
            at = first + i * U64.size
            pgid = U64.unpack_from(self._data, at)[0]
            if not 2 <= pgid < self.pages:
                raise BoltError(f"free page {pgid} outside pages 2..{self.pages - 1}", at)
            if self._state[pgid]:
                raise BoltError(f"page {pgid} is free twice, or free and in use", at)
            self._state[pgid] = _FREE
            free.add(pgid)
        return free

    # ------------------------------------------------------------------ pages
    def _claim(self, pgid: int, want: int, what: str, ref: int) -> tuple[int, int]:
        """Check and mark page pgid (and its overflow run); (start, end) of its bytes."""
        if pgid >= self.pages or pgid < 2:
            raise BoltError(f"{what} points at page {pgid}, outside pages 2..{self.pages - 1}", ref)
        start = pgid * self.page_size
        pid, flags, _count, overflow = PAGE_HEADER.unpack_from(self._data, start)
        if pid != pgid:
            raise BoltError(f"page {pgid} says it is page {pid}", start)
        if not flags & want:
            raise BoltError(f"page {pgid} has flags {flags:#x}, {what} needs {want:#x}", start + 8)
        if pgid + overflow >= self.pages:
            raise BoltError(f"page {pgid} with {overflow} overflow pages runs past the last page", start + 12)
        for p in range(pgid, pgid + overflow + 1):
            if self._state[p] == _FREE:
                raise BoltError(f"page {p} is free but {what} uses it", start)
            if self._state[p]:
                raise BoltError(f"page {p} is reached twice (a cycle or a shared page)", ref)
            self._state[p] = _INUSE
        self._visited += overflow + 1
        if self._progress is not None and self._visited % PROGRESS_EVERY <= overflow:
            self._progress(self._visited * self.page_size)
        return start, start + (overflow + 1) * self.page_size

    def _leaf_pages(self, b: Bucket) -> Iterator[tuple[int, int]]:
        """(start, end) of every leaf node of bucket b, in key order."""
        if b.root == 0:
            yield b.inline, b.inline_end
            return
        stack = [(b.root, 0, b.ref)]
        while stack:
            pgid, depth, ref = stack.pop()
            start, end = self._claim(pgid, BRANCH | LEAF, "a bucket", ref)
            flags, count = PAGE_HEADER.unpack_from(self._data, start)[1:3]
            if flags & LEAF:
                yield start, end
                continue
            if count == 0:
                raise BoltError(f"branch page {pgid} has no elements", start + 10)
            if depth >= MAX_DEPTH:
                raise BoltError(f"tree deeper than {MAX_DEPTH} levels", start)
            children = []
            prev = b""
            _, body = self._body(start, end)
            for i in range(count):
                at = start + HEADER + i * ELEMENT
                pos, ksize, child = BRANCH_ELEMENT.unpack_from(self._data, at)
                self._span(i, at, at + pos, ksize, ksize, body, end)
                key = bytes(self._data[at + pos : at + pos + ksize])
                if key <= prev:
                    raise BoltError(f"branch page {pgid}: keys out of order", at)
                prev = key
                children.append((child, depth + 1, at))
            stack.extend(reversed(children))

    def _body(self, start: int, end: int) -> tuple[int, int]:
        """(element count, where the element headers end) of the node in [start, end)."""
        count = PAGE_HEADER.unpack_from(self._data, start)[2]
        body = start + HEADER + count * ELEMENT
        if body > end:
            raise BoltError(f"{count} elements overrun their {end - start}-byte node", start + 10)
        return count, body

    def _span(self, i: int, at: int, kstart: int, ksize: int, size: int, body: int, end: int) -> None:
        """Refuse an element whose key is empty or too long, or whose bytes leave its node."""
        if ksize == 0 or ksize > MAX_KEY:
            raise BoltError(f"element {i}: key size {ksize} outside 1..{MAX_KEY}", at)
        if kstart < body or kstart + size > end:
            raise BoltError(
                f"element {i}: its {size} bytes at offset {kstart} lie outside the node [{body}, {end})",
                at,
            )

    # ------------------------------------------------------------------ buckets
    @property
    def root(self) -> Bucket:
        """The root bucket: its keys name the top-level buckets."""
        return Bucket(self.meta.root, ref=self.meta_at + 16)

    def items(self, b: Bucket) -> Iterator[Item]:
        """Every element of bucket b in key order (nested buckets are not entered)."""
        data = self._data
        unpack = LEAF_ELEMENT.unpack_from
        prev = b""
        for start, end in self._leaf_pages(b):
            count, body = self._body(start, end)
            at = start + HEADER
            for i in range(count):
                flags, pos, ksize, vsize = unpack(data, at)
                kstart = at + pos
                vstart = kstart + ksize
                if ksize == 0 or ksize > MAX_KEY or kstart < body or vstart + vsize > end:
                    self._span(i, at, kstart, ksize, ksize + vsize, body, end)
                key = bytes(data[kstart:vstart])
                if key <= prev:
                    raise BoltError(f"keys out of order: {key[:40]!r} after {prev[:40]!r}", at)
                prev = key
                value = bytes(data[vstart : vstart + vsize])
                child = self._child(value, vstart, b.depth + 1, at) if flags & BUCKET_LEAF else None
                yield Item(key, value, at, child)
                at += ELEMENT

    def _child(self, value: bytes, offset: int, depth: int, ref: int) -> Bucket:
        if depth > MAX_NESTING:
            raise BoltError(f"buckets nested deeper than {MAX_NESTING}", offset)
        if len(value) < BUCKET_HEADER.size:
            raise BoltError(f"bucket value of {len(value)} bytes is shorter than its header", offset)
        root, seq = BUCKET_HEADER.unpack_from(value)
        if root != 0:
            return Bucket(root, sequence=seq, depth=depth, ref=ref)
        page = offset + BUCKET_HEADER.size
        end = offset + len(value)
        if end - page < HEADER:
            raise BoltError("inline bucket too short for its page header", page)
        flags = PAGE_HEADER.unpack_from(self._data, page)[1]
        if not flags & LEAF:
            raise BoltError(f"inline bucket page has flags {flags:#x}, want a leaf", page + 8)
        return Bucket(0, page, end, seq, depth, ref)

    def walk(self, b: Bucket | None = None) -> Iterator[tuple[tuple[bytes, ...], Item]]:
        """Every item of b and of every bucket inside it, depth first: (bucket path, item)."""
        stack: list[tuple[tuple[bytes, ...], Iterator[Item]]] = [((), self.items(b or self.root))]
        while stack:
            path, it = stack[-1]
            item = next(it, None)
            if item is None:
                stack.pop()
                continue
            yield path, item
            if item.bucket is not None:
                stack.append(((*path, item.key), self.items(item.bucket)))

    def finish(self) -> None:
        """After a walk of every bucket: each page below the high-water mark is used or free."""
        if self.free_pages is None:
            return  # no freelist on file: bbolt counts the unreachable pages as free
        missing = self._state.find(0)
        if missing >= 0:
            raise BoltError(f"page {missing} is neither reachable nor free", missing * self.page_size)
