"""The bbolt file format (go.etcd.io/bbolt v1.3, the one etcd 3.4 and 3.5 use), as plain structs.

A file is a run of fixed-size pages (4096 bytes here; the size is in the meta page). Every page
starts with a 16-byte header; a node larger than a page takes `overflow` more pages right after
it. All integers are little-endian (bbolt writes its structs as the machine lays them out, and
etcd runs on little-endian machines).

    page header   id u64, flags u16, count u16, overflow u32
    meta page     header, then magic u32 (0xED0CDAED), version u32 (2), page_size u32, flags u32,
                  root bucket (root pgid u64, sequence u64), freelist pgid u64, high-water mark
                  pgid u64 (the page count), txid u64, checksum u64 = FNV-64a of the 56 bytes
                  before it (0 means unchecked). Pages 0 and 1 both hold one; the valid one with
                  the higher txid wins.
    freelist      header (count; 0xFFFF means the real count is the first u64), then page ids
    branch page   header, count elements (pos u32, ksize u32, child pgid u64), then the keys
    leaf page     header, count elements (flags u32, pos u32, ksize u32, vsize u32), then each
                  key followed by its value; `pos` counts from the element's own first byte
    bucket        a leaf element with flag 1: its value is a bucket header (root pgid u64,
                  sequence u64); root 0 means inline: a leaf page (header and elements) follows
                  the bucket header inside the value itself

Worked example, a leaf page with one element key b"k" -> b"vv" at page 3:
    00: 03 00 00 00 00 00 00 00  02 00  01 00  00 00 00 00   id 3, leaf, 1 element, no overflow
    16: 00 00 00 00  10 00 00 00  01 00 00 00  02 00 00 00   flags 0, pos 16, ksize 1, vsize 2
    32: 6b 76 76                                             element at 16 + pos 16 = 32: "k" "vv"
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_SIZE = 4096  # what etcd's bbolt uses on amd64 and arm64 Linux (the OS page size)
MIN_PAGE_SIZE = 1024
MAX_PAGE_SIZE = 64 * 1024
NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # meta.freelist when the freelist is not synced (rebuilt on open)

BRANCH = 0x01
LEAF = 0x02
META = 0x04
FREELIST = 0x10
BUCKET_LEAF = 0x01  # leaf element flag: the value is a bucket

MAX_KEY = 32768  # bbolt's MaxKeySize
MAX_VALUE = (1 << 31) - 2  # bbolt's MaxValueSize
MAX_COUNT = 0xFFFE  # elements in one node: bbolt panics at 0xFFFF

PAGE_HEADER = struct.Struct("<QHHI")
LEAF_ELEMENT = struct.Struct("<IIII")
BRANCH_ELEMENT = struct.Struct("<IIQ")
BUCKET_HEADER = struct.Struct("<QQ")
META_BODY = struct.Struct("<IIIIQQQQQ")  # everything the checksum covers
U64 = struct.Struct("<Q")
HEADER = PAGE_HEADER.size
ELEMENT = LEAF_ELEMENT.size  # branch elements are the same size
META_OFFSET = HEADER  # the meta struct follows the page header
META_SIZE = META_BODY.size + U64.size

Data = bytes | bytearray | memoryview | mmap.mmap  # what a reader reads from: bytes or a mapped file

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


class BoltError(Exception):
    """A bbolt file is damaged or not one; offset is the byte where the fault was found."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset
        self.reason = message


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64 bits: bbolt's meta page checksum."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK
    return h


@dataclass(frozen=True)
class Meta:
    """One meta page's fields."""

    page_size: int
    root: int  # the root bucket's root page
    freelist: int
    pages: int  # high-water mark: pages in use, so the database is pages * page_size bytes
    txid: int
    flags: int = 0
    sequence: int = 0
    magic: int = MAGIC
    version: int = VERSION

    def body(self) -> bytes:
        return META_BODY.pack(
            self.magic,
            self.version,
            self.page_size,
            self.flags,
            self.root,
            self.sequence,
            self.freelist,
            self.pages,
            self.txid,
        )

    def page(self, pgid: int) -> bytes:
        """A whole meta page (header, fields, checksum, zero padding) for page 0 or 1."""
        body = self.body()
        data = PAGE_HEADER.pack(pgid, META, 0, 0) + body + U64.pack(fnv64a(body))
        return data + bytes(self.page_size - len(data))


def read_meta(data: Data, offset: int) -> tuple[Meta | None, str]:
    """The meta page at offset, or (None, why it is not valid); data must hold the whole struct."""
    raw = bytes(data[offset + META_OFFSET : offset + META_OFFSET + META_SIZE])
    if len(raw) < META_SIZE:
        return None, "meta page truncated"
    magic, version, page_size, flags, root, seq, freelist, pages, txid = META_BODY.unpack_from(raw)
    (checksum,) = U64.unpack_from(raw, META_BODY.size)
    if magic != MAGIC:
        return None, f"bad magic {magic:#010x}, want {MAGIC:#010x}: not a bbolt file"
    if version != VERSION:
        return None, f"unsupported bbolt version {version}, want {VERSION}"
    if checksum != 0 and checksum != fnv64a(raw[: META_BODY.size]):
        return None, "meta page checksum mismatch"
    return Meta(page_size, root, freelist, pages, txid, flags, seq, magic, version), ""
