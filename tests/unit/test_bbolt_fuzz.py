"""Fuzz the etcd-snapshot reader: damaged files end in a BoltError, never anything else.

Each case damages a valid snapshot (bit flips, hostile integers in page and element headers, a
page copied over another, truncation, growth) and, half the time, writes a matching SHA-256
trailer so that only the structural and layout checks stand between the damage and a restore.
The budget is METASTORE_FUZZ_SECONDS (default 4); the seed is printed on a failure, and
METASTORE_FUZZ_SEED replays one. A hang would be caught by pytest-timeout.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import time

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import etcdlayout as E
from metastore_core.storage import etcdsnap
from metastore_core.storage.bbolt import format as F
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine

PS = F.PAGE_SIZE
HOSTILE = (0, 1, 2, 3, 0x7F, 0xFF, 0xFFFF, 0xFFFE, 1 << 31, (1 << 32) - 1, 1 << 40, (1 << 64) - 1)


def sample() -> bytes:
    """A snapshot with a branch level, overflow pages, inline buckets and every etcd bucket."""
    e = Engine(MemoryStorage())
    lease = e.write(pb.LeaseGrantRequest(ID=0x42, TTL=60)).ID
    for i in range(700):
        e.write(pb.PutRequest(key=b"key/%04d" % (i % 300), value=b"v" * (i % 50), lease=lease * (i % 9 == 0)))
        if i % 40 == 0:
            e.write(pb.DeleteRangeRequest(key=b"key/%04d" % (i % 300)))
    e.write(pb.PutRequest(key=b"big", value=b"x" * 9000))
    e.write(pb.CompactionRequest(revision=300))
    buf = io.BytesIO()
    etcdsnap.write(e.storage.view(), buf, [E.Member(1, "m", ["http://p:1"], [])])
    return buf.getvalue()


def damage(rnd: random.Random, good: bytes) -> tuple[bytearray, str]:
    data = bytearray(good[:-32])
    pages = len(data) // PS
    kind = rnd.randrange(7)
    if kind == 0:  # a few bit flips anywhere
        for _ in range(rnd.randrange(1, 4)):
            at = rnd.randrange(len(data))
            data[at] ^= 1 << rnd.randrange(8)
    elif kind in (1, 2):  # a hostile integer in a page header or an element header
        page = rnd.randrange(pages)
        at = page * PS + (rnd.randrange(16) if kind == 1 else 16 + rnd.randrange(40) * 16 + rnd.randrange(16))
        fmt = rnd.choice(("<B", "<H", "<I", "<Q"))
        value = rnd.choice((*HOSTILE, rnd.randrange(pages + 2), rnd.randrange(1 << 16)))
        size = struct.calcsize(fmt)
        if at + size <= len(data):
            struct.pack_into(fmt, data, at, value & ((1 << (8 * size)) - 1))
    elif kind == 3:  # one page copied over another (a cycle or a shared child, often)
        src, dst = rnd.randrange(2, pages), rnd.randrange(2, pages)
        data[dst * PS : (dst + 1) * PS] = data[src * PS : (src + 1) * PS]
    elif kind == 4:  # truncated
        del data[rnd.randrange(len(data)) :]
    elif kind == 5:  # grown: junk pages after the end
        data += rnd.randbytes(PS * rnd.randrange(1, 3))
    else:  # the meta pages' fields, with their checksums made right again
        field = rnd.choice(("root", "freelist", "pages", "txid", "page_size"))
        value = rnd.choice((*HOSTILE, rnd.randrange(pages + 3), PS // 2, PS * 2))
        for page in (0, 1):
            m, _ = F.read_meta(data, page * PS)
            if m is not None:
                mask = 0xFFFFFFFF if field == "page_size" else (1 << 64) - 1
                body = F.Meta(**{**m.__dict__, field: value & mask}).body()
                at = page * PS + F.META_OFFSET
                data[at : at + F.META_SIZE] = body + F.U64.pack(F.fnv64a(body))
    fixed = rnd.random() < 0.5
    if fixed:
        data += hashlib.sha256(data).digest()
    return data, f"kind {kind}, trailer {'fixed' if fixed else 'kept'}"


def test_damaged_snapshots_end_in_a_bolt_error_only() -> None:
    good = sample()
    etcdsnap.verify_data(good, len(good))  # the undamaged one is fine
    budget = float(os.environ.get("METASTORE_FUZZ_SECONDS", "4"))
    seed = int(os.environ.get("METASTORE_FUZZ_SEED", str(random.randrange(1 << 32))))
    rnd = random.Random(seed)
    deadline = time.monotonic() + budget
    cases = refused = 0
    while time.monotonic() < deadline:
        data, what = damage(rnd, good)
        cases += 1
        skip = rnd.random() < 0.2
        try:
            etcdsnap.verify_data(bytes(data), len(data), skip_hash_check=skip)
        except F.BoltError as exc:
            refused += 1
            assert exc.offset >= 0 and exc.reason, (seed, cases, what)
        except Exception as exc:
            raise AssertionError(f"seed {seed}, case {cases} ({what}): {exc!r}") from exc
    assert cases > 20 and refused > cases // 2, (seed, cases, refused)
