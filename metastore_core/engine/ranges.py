"""etcd's Range: filters, sorting, limit, count, keys_only and count_only."""

from __future__ import annotations

from itertools import islice

from metastore_core.mvcc.index import entry_main
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb.rpc_pb2 import RangeRequest, RangeResponse
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue

_NONE = RangeRequest.NONE
_DESCEND = RangeRequest.DESCEND
_KEY = RangeRequest.KEY

_SORT_KEYS = {
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def range_at(store: MVCCStore, req: RangeRequest, rev: int) -> RangeResponse:
    """Answer req at revision rev (already checked against compaction)."""
    resp = RangeResponse()
    # count is taken before limit and filters, as etcd counts
    if req.count_only:
        resp.count = store.count_live(req.key, req.range_end, rev)
        return resp
    limit = req.limit
    filtered = bool(
        req.min_mod_revision or req.max_mod_revision or req.min_create_revision or req.max_create_revision
    )
    order = req.sort_order
    if req.sort_target != _KEY and order == _NONE:
        order = RangeRequest.ASCEND
    if not filtered and (order == _NONE or (req.sort_target == _KEY and order == RangeRequest.ASCEND)):
        # Keys come ascending already: load only what is returned. A page of a big range
        # (Kubernetes lists with limit) counts every key but builds only the page.
        if limit:
            resp.count = store.count_live(req.key, req.range_end, rev)
            live = list(islice(store.live(req.key, req.range_end, rev), limit))
            resp.more = resp.count > limit
        else:
            live = list(store.live(req.key, req.range_end, rev))
            resp.count = len(live)
        kvs = resp.kvs
        for _, entry, h in live:
            kv = kvs.add()
            kv.MergeFromString(store.kv_bytes(entry, h))
            if req.keys_only:
                kv.value = b""
        return resp
    live = list(store.live(req.key, req.range_end, rev))
    resp.count = len(live)
    if req.min_mod_revision or req.max_mod_revision:
        lo, hi = req.min_mod_revision, req.max_mod_revision
        live = [
            (k, e, h)
            for k, e, h in live
            if (not lo or entry_main(e) >= lo) and (not hi or entry_main(e) <= hi)
        ]
    items: list[KeyValue] = [store.kv(e, h) for _, e, h in live]
    if req.min_create_revision or req.max_create_revision:
        lo, hi = req.min_create_revision, req.max_create_revision
        items = [
            kv
            for kv in items
            if (not lo or kv.create_revision >= lo) and (not hi or kv.create_revision <= hi)
        ]
    if order != _NONE:
        key_fn = _SORT_KEYS.get(req.sort_target, lambda kv: kv.key)
        items.sort(key=key_fn, reverse=order == _DESCEND)
    if limit and len(items) > limit:
        items = items[:limit]
        resp.more = True
    for kv in items:
        if req.keys_only:
            kv.value = b""
    resp.kvs.extend(items)
    return resp
