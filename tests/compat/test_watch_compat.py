"""One Watch scenario against a real etcd and against metastore: the streams must be identical.

Every step sends requests (KV writes or watch requests) and reads the number
of responses etcd gives; responses of one step are compared as protobuf text,
sorted (etcd does not order responses of different watchers), with the
per-server identity (cluster_id, member_id, raft_term) blanked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf import text_format

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc

NOPUT = pb.WatchCreateRequest.NOPUT
NODELETE = pb.WatchCreateRequest.NODELETE


def create(key: bytes, end: bytes = b"", **kw: Any) -> pb.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end, **kw))


def cancel(wid: int) -> pb.WatchRequest:
    return pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=wid))


def put(k: bytes, v: bytes) -> pb.PutRequest:
    return pb.PutRequest(key=k, value=v)


def txn(*ops: pb.RequestOp) -> pb.TxnRequest:
    return pb.TxnRequest(success=list(ops))


PROGRESS = pb.WatchRequest(progress_request=pb.WatchProgressRequest())

# (what to do, how many responses the stream gives for it)
SCENARIO: list[tuple[Any, int]] = [
    (put(b"a", b"1"), 0),
    (put(b"a", b"2"), 0),
    (put(b"b", b"x"), 0),
    (create(b"a"), 1),  # id 0
    (create(b"\0", b"\0", start_revision=2, prev_kv=True), 2),  # id 1: created + catch-up 2..4
    (create(b"a", watch_id=7), 1),
    (create(b"b", watch_id=7), 1),  # duplicate id: refused
    (create(b"zz"), 1),  # auto id after a client-chosen one: 2
    (create(b"a", b"c", filters=[NOPUT]), 1),  # id 3
    (create(b"a", b"c", filters=[NODELETE], prev_kv=True), 1),  # id 4
    (create(b"m", b"\0"), 1),  # id 5: from key m on
    (put(b"a", b"3"), 4),  # ids 0, 1, 7, 4
    (put(b"zz", b"q"), 3),  # ids 1, 2, 5
    (
        txn(
            pb.RequestOp(request_put=pb.PutRequest(key=b"b", value=b"y")),
            pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a")),
            pb.RequestOp(request_put=pb.PutRequest(key=b"c", value=b"c")),
        ),
        5,  # one response per watcher: ids 0, 1, 7, 3, 4
    ),
    (pb.DeleteRangeRequest(key=b"a", range_end=b"zzz"), 4),  # ids 1, 2, 3, 5 (4 has NODELETE)
    (pb.DeleteRangeRequest(key=b"nothing"), 0),  # no revision, no event
    (cancel(7), 1),
    (cancel(99), 0),  # unknown id: no reply
    (PROGRESS, 1),
    (create(b"fut", start_revision=10), 1),  # id 6: two revisions in the future
    (put(b"fut", b"1"), 1),  # id 1 only
    (put(b"fut", b"2"), 2),  # ids 1, 6
    (create(b"a", start_revision=-5), 2),  # before any compaction: compact_revision -1
    (pb.CompactionRequest(revision=9), 0),
    (create(b"a", start_revision=3), 2),  # below the compaction: created, then cancel
    (create(b"\0", b"\0", start_revision=9), 2),  # at the compaction point: still readable
    (create(b"zz", b"a"), 1),  # empty range
    (PROGRESS, 1),
]


def _norm(r: pb.WatchResponse) -> str:
    r.header.cluster_id = 0
    r.header.member_id = 0
    r.header.raft_term = 0
    return text_format.MessageToString(r, as_one_line=True)


async def _run(endpoint: str) -> list[list[str]]:
    out: list[list[str]] = []
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        # Read in a task: cancelling a grpc.aio read (a timeout) would cancel the whole call.
        queue: asyncio.Queue[pb.WatchResponse] = asyncio.Queue()

        async def reader() -> None:
            async for r in call:
                await queue.put(r)

        task = asyncio.get_running_loop().create_task(reader())
        for step, n in SCENARIO:
            if isinstance(step, pb.WatchRequest):
                await call.write(step)
            elif isinstance(step, pb.PutRequest):
                await kv.Put(step)
            elif isinstance(step, pb.DeleteRangeRequest):
                await kv.DeleteRange(step)
            elif isinstance(step, pb.TxnRequest):
                await kv.Txn(step)
            else:
                await kv.Compact(step)
            got = [_norm(await asyncio.wait_for(queue.get(), 5)) for _ in range(n)]
            out.append(sorted(got))
        # Nothing else may be pending on the stream.
        await call.write(PROGRESS)
        last = await asyncio.wait_for(queue.get(), 5)
        out.append([_norm(last)])
        # After a half-close etcd keeps the call open and its watchers delivering.
        await call.done_writing()
        await kv.Put(put(b"fut", b"3"))
        out.append(sorted([_norm(await asyncio.wait_for(queue.get(), 5)) for _ in range(3)]))  # ids 1, 6, 8
        task.cancel()
    return out


def test_watch_stream_matches_etcd(metastore: Proc, etcd: Proc) -> None:
    want = asyncio.run(_run(etcd.endpoint))
    have = asyncio.run(_run(metastore.endpoint))
    for i, (w, h) in enumerate(zip(want, have, strict=True)):
        step = SCENARIO[i][0] if i < len(SCENARIO) else "final progress, half-close"
        assert h == w, (
            f"step {i} ({text_format.MessageToString(step, as_one_line=True) if i < len(SCENARIO) else step})"
        )
