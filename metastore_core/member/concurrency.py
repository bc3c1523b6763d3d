"""What etcd's server-side Lock and Election build on: ordered keys under a prefix.

Keys of contenders live under `name/`, one per lease; the one with the lowest
create revision holds the lock (or leads). Waiting for a turn means waiting
until every key created before ours is deleted, as etcd's clientv3
concurrency package does, but inside the daemon.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from metastore_core.engine.entry import AuthInfo
from metastore_core.member.notify import KeyNotifier
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage.layout import prefix_end

if TYPE_CHECKING:
    from metastore_core.member.node import Node


def op(r: pb.PutRequest | pb.RangeRequest | pb.DeleteRangeRequest) -> pb.RequestOp:
    if isinstance(r, pb.PutRequest):
        return pb.RequestOp(request_put=r)
    if isinstance(r, pb.RangeRequest):
        return pb.RequestOp(request_range=r)
    return pb.RequestOp(request_delete_range=r)


def created_at(key: bytes, rev: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=rev)


def first_created(prefix: bytes) -> pb.RangeRequest:
    return pb.RangeRequest(
        key=prefix,
        range_end=prefix_end(prefix),
        sort_target=pb.RangeRequest.CREATE,
        sort_order=pb.RangeRequest.ASCEND,
        limit=1,
    )


class Contenders:
    """Creates contender keys and waits for their turn, through the node's public calls only."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.notifier = KeyNotifier()
        node.subscribe(self.notifier.on_events)

    async def oldest(self, prefix: bytes, auth: AuthInfo | None = None) -> KeyValue | None:
        resp = await self.node.range(first_created(prefix), auth)
        return resp.kvs[0] if resp.kvs else None

    async def join(
        self, prefix: bytes, key: bytes, value: bytes, lease: int, auth: AuthInfo | None = None
    ) -> tuple[int, KeyValue | None]:
        """Create key if absent; returns (its create revision, the existing kv if it was there)."""
        resp = await self.node.write(
            pb.TxnRequest(
                compare=[created_at(key, 0)],
                success=[op(pb.PutRequest(key=key, value=value, lease=lease))],
                failure=[op(pb.RangeRequest(key=key))],
            ),
            auth,
        )
        if resp.succeeded:
            return resp.header.revision, None
        kv = resp.responses[0].response_range.kvs[0]
        return kv.create_revision, kv

    async def wait_turn(self, prefix: bytes, my_rev: int, auth: AuthInfo | None = None) -> None:
        """Return when no key under prefix was created before my_rev."""
        end = prefix_end(prefix)
        while True:
            ev = self.notifier.changed(prefix, end)
            older = pb.RangeRequest(
                key=prefix,
                range_end=end,
                sort_target=pb.RangeRequest.CREATE,
                sort_order=pb.RangeRequest.DESCEND,
                limit=1,
                max_create_revision=my_rev - 1,
            )
            if not (await self.node.range(older, auth)).kvs:
                self.notifier.forget(ev)
                return
            try:
                await ev.wait()
            except asyncio.CancelledError:
                self.notifier.forget(ev)
                raise

    async def wait_change(self, prefix: bytes) -> None:
        ev = self.notifier.changed(prefix, prefix_end(prefix))
        try:
            await ev.wait()
        finally:
            self.notifier.forget(ev)
