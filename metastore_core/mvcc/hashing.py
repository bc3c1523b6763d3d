"""Hash and HashKV: deterministic checksums of the MVCC keyspace, read from a storage view.

Both depend only on the history a store received, never on when or how far a background
compaction got, on CRC framing, or on member/cluster IDs: two data dirs that took the same
writes agree, before and after a restart.

HashKV(rev) covers every revision record with compact_rev < main <= rev, plus, for each key,
the record a compaction at compact_rev keeps (its newest record <= compact_rev unless that is
a tombstone; see index.py). Records are fed in revision order as (storage key, KeyValue bytes).
Hash additionally folds in the compacted revision, the leases (id, granted TTL) and the auth
records, so it covers the whole logical store. CRC32 (IEEE) like the rest of our framing.
"""

from __future__ import annotations

import zlib

from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageView


def hash_kv(view: StorageView, codec: L.RecordCodec, rev: int, compact_rev: int) -> int:
    """CRC32 of the MVCC keyspace up to rev as a compaction at compact_rev leaves it."""
    crc = 0
    if compact_rev > 0:
        kept: dict[bytes, bytes | None] = {}
        for skey, record in view.scan(*L.rev_range(0, compact_rev + 1)):
            kv = KeyValue.FromString(codec.decode(record, skey))
            kept[kv.key] = None if L.parse_rev_key(skey)[2] else skey
        for skey in sorted(s for s in kept.values() if s is not None):
            kept_record = view.get(skey)
            if kept_record is None:  # cannot happen: a compaction never drops a kept record
                raise RuntimeError(f"kept record {skey!r} missing from the view")
            crc = zlib.crc32(skey, crc)
            crc = zlib.crc32(codec.decode(kept_record, skey), crc)
    for skey, record in view.scan(*L.rev_range(compact_rev + 1, rev + 1)):
        crc = zlib.crc32(skey, crc)
        crc = zlib.crc32(codec.decode(record, skey), crc)
    return crc


def hash_all(view: StorageView, codec: L.RecordCodec, rev: int, compact_rev: int) -> int:
    """HashKV at rev folded with the compacted revision, leases and auth records."""
    crc = zlib.crc32(L.u64(hash_kv(view, codec, rev, compact_rev)) + L.u64(compact_rev))
    for key, value in view.scan(L.LEASE_PREFIX, L.prefix_end(L.LEASE_PREFIX)):
        ttl, _remaining = L.parse_lease_value(codec.decode(value, key))  # remaining: a checkpoint
        crc = zlib.crc32(key + L.u64(ttl), crc)
    for prefix in (L.USER_PREFIX, L.ROLE_PREFIX):
        for key, value in view.scan(prefix, L.prefix_end(prefix)):
            crc = zlib.crc32(key + codec.decode(value, key), crc)
    return crc
