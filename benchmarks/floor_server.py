"""The floor: a do-nothing etcd KV servicer over a dict (no disk, no checks, no history).

It answers the benchmark's requests with correctly shaped responses and nothing more, so what
it costs is the price of one RPC in Python with grpcio. Two shapes:

    python -m benchmarks.floor_server --port P --shape threads --workers 2   # grpcio thread pool
    python -m benchmarks.floor_server --port P --shape aio [--uvloop] [--hop]  # grpc.aio

The thread-pool shape serves KV only: every open stream (Watch, LeaseKeepAlive) would hold one
of its few worker threads for its whole life, which is why metastore runs on grpc.aio. The aio
shape also serves Lease (grant, keep-alive, revoke) and a minimal Watch fan-out. With --hop
its writes (Put, DeleteRange, Txn) answer only after a round trip through one plain thread,
shared by the writes that arrive meanwhile, as metastore's group commit does, minus the disk:
what a durable write costs over the bare RPC before any engine work.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import queue
import signal
import threading
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as pbg
from metastore_core.pb.mvccpb.kv_pb2 import Event, KeyValue

# The transport options metastore's server uses (server/app.py), repeated here so the floor runs
# even while the server package is being edited.
OPTIONS = [
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.server.max_pending_requests", 20000),
    ("grpc.server.max_pending_requests_hard_limit", 30000),
    ("grpc.so_reuseport", 0),
]


class Floor:
    """The dict and the little logic every request needs; shared by both shapes."""

    def __init__(self) -> None:
        self.kvs: dict[bytes, KeyValue] = {}
        self.sorted: list[bytes] = []
        self.rev = 1
        self.lease_id = 0
        self.lock = threading.Lock()
        self.on_put: list[Any] = []  # aio watch fan-out hooks

    def _header(self, h: pb.ResponseHeader) -> None:
        h.cluster_id, h.member_id, h.raft_term, h.revision = 1, 1, 1, self.rev

    def _put(self, key: bytes, value: bytes) -> KeyValue:
        self.rev += 1
        old = self.kvs.get(key)
        if old is None:
            bisect.insort(self.sorted, key)
            kv = KeyValue(key=key, value=value, create_revision=self.rev, mod_revision=self.rev, version=1)
        else:
            kv = KeyValue(
                key=key,
                value=value,
                create_revision=old.create_revision,
                mod_revision=self.rev,
                version=old.version + 1,
            )
        self.kvs[key] = kv
        for hook in self.on_put:
            hook(kv)
        return kv

    def _range(self, r: pb.RangeRequest, resp: pb.RangeResponse) -> None:
        if not r.range_end:
            kv = self.kvs.get(r.key)
            if kv is not None:
                resp.kvs.append(kv)
        else:
            lo = bisect.bisect_left(self.sorted, r.key)
            hi = bisect.bisect_left(self.sorted, r.range_end)
            resp.kvs.extend(self.kvs[k] for k in self.sorted[lo:hi])
        resp.count = len(resp.kvs)

    def put(self, r: pb.PutRequest) -> pb.PutResponse:
        resp = pb.PutResponse()
        with self.lock:
            self._put(r.key, r.value)
            self._header(resp.header)
        return resp

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        resp = pb.RangeResponse()
        with self.lock:
            self._range(r, resp)
            self._header(resp.header)
        return resp

    def delete(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp = pb.DeleteRangeResponse()
        with self.lock:
            if self.kvs.pop(r.key, None) is not None:
                self.sorted.pop(bisect.bisect_left(self.sorted, r.key))
                self.rev += 1
                resp.deleted = 1
            self._header(resp.header)
        return resp

    def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        """Value-equality compares on single keys; put and range ops. Enough for the benchmark."""
        resp = pb.TxnResponse()
        with self.lock:
            ok = True
            for c in r.compare:
                kv = self.kvs.get(c.key)
                ok = ok and kv is not None and kv.value == c.value
            resp.succeeded = ok
            for op in r.success if ok else r.failure:
                out = resp.responses.add()
                if op.HasField("request_put"):
                    self._put(op.request_put.key, op.request_put.value)
                    self._header(out.response_put.header)
                elif op.HasField("request_range"):
                    self._range(op.request_range, out.response_range)
            self._header(resp.header)
        return resp

    def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        with self.lock:
            self.lease_id += 1
            resp = pb.LeaseGrantResponse(ID=self.lease_id, TTL=r.TTL)
            self._header(resp.header)
        return resp


class ThreadKV(pbg.KVServicer):
    def __init__(self, floor: Floor) -> None:
        self.f = floor

    def Range(self, r: pb.RangeRequest, ctx: Any) -> pb.RangeResponse:
        return self.f.range(r)

    def Put(self, r: pb.PutRequest, ctx: Any) -> pb.PutResponse:
        return self.f.put(r)

    def DeleteRange(self, r: pb.DeleteRangeRequest, ctx: Any) -> pb.DeleteRangeResponse:
        return self.f.delete(r)

    def Txn(self, r: pb.TxnRequest, ctx: Any) -> pb.TxnResponse:
        return self.f.txn(r)


class Hop:
    """Writers wait for one no-op round trip through a plain thread, shared while one is out."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        self.out = False
        self.jobs: queue.SimpleQueue[asyncio.AbstractEventLoop] = queue.SimpleQueue()
        threading.Thread(target=self._thread, daemon=True).start()

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiters.append(fut)
        if not self.out:
            self.out = True
            self.jobs.put(loop)
        await fut

    def _thread(self) -> None:
        while True:
            self.jobs.get().call_soon_threadsafe(self._back)

    def _back(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            fut.set_result(None)
        self.out = False


class AioKV(pbg.KVServicer):
    def __init__(self, floor: Floor, hop: Hop | None = None) -> None:
        self.f = floor
        self.hop = hop

    async def Range(self, r: pb.RangeRequest, ctx: Any) -> pb.RangeResponse:
        return self.f.range(r)

    async def Put(self, r: pb.PutRequest, ctx: Any) -> pb.PutResponse:
        resp = self.f.put(r)
        if self.hop is not None:
            await self.hop.wait()
        return resp

    async def DeleteRange(self, r: pb.DeleteRangeRequest, ctx: Any) -> pb.DeleteRangeResponse:
        resp = self.f.delete(r)
        if self.hop is not None:
            await self.hop.wait()
        return resp

    async def Txn(self, r: pb.TxnRequest, ctx: Any) -> pb.TxnResponse:
        resp = self.f.txn(r)
        if self.hop is not None:
            await self.hop.wait()
        return resp


class AioLease(pbg.LeaseServicer):
    def __init__(self, floor: Floor) -> None:
        self.f = floor

    async def LeaseGrant(self, r: pb.LeaseGrantRequest, ctx: Any) -> pb.LeaseGrantResponse:
        return self.f.lease_grant(r)

    async def LeaseRevoke(self, r: pb.LeaseRevokeRequest, ctx: Any) -> pb.LeaseRevokeResponse:
        resp = pb.LeaseRevokeResponse()
        self.f._header(resp.header)
        return resp

    async def LeaseKeepAlive(
        self, requests: AsyncIterator[pb.LeaseKeepAliveRequest], ctx: Any
    ) -> AsyncIterator[pb.LeaseKeepAliveResponse]:
        async for r in requests:
            resp = pb.LeaseKeepAliveResponse(ID=r.ID, TTL=60)
            self.f._header(resp.header)
            yield resp


class AioWatch(pbg.WatchServicer):
    """One queue per stream; every put to a watched key is queued to its watchers."""

    def __init__(self, floor: Floor) -> None:
        self.f = floor
        self.watchers: dict[bytes, list[tuple[int, asyncio.Queue[KeyValue]]]] = {}
        floor.on_put.append(self._notify)

    def _notify(self, kv: KeyValue) -> None:
        for _, q in self.watchers.get(kv.key, ()):
            q.put_nowait(kv)

    async def Watch(
        self, requests: AsyncIterator[pb.WatchRequest], ctx: Any
    ) -> AsyncIterator[pb.WatchResponse]:
        q: asyncio.Queue[KeyValue] = asyncio.Queue()
        mine: list[tuple[bytes, tuple[int, asyncio.Queue[KeyValue]]]] = []
        out: asyncio.Queue[pb.WatchResponse] = asyncio.Queue()

        async def read() -> None:
            async for r in requests:
                if r.HasField("create_request"):
                    wid = len(mine)
                    entry = (wid, q)
                    self.watchers.setdefault(r.create_request.key, []).append(entry)
                    mine.append((r.create_request.key, entry))
                    resp = pb.WatchResponse(watch_id=wid, created=True)
                    self.f._header(resp.header)
                    await out.put(resp)

        reader = asyncio.create_task(read())
        try:
            while True:
                if not out.empty():
                    yield out.get_nowait()
                    continue
                get_kv = asyncio.ensure_future(q.get())
                get_out = asyncio.ensure_future(out.get())
                done, pending = await asyncio.wait({get_kv, get_out}, return_when=asyncio.FIRST_COMPLETED)
                for p in pending:
                    p.cancel()
                if get_out in done:
                    yield get_out.result()
                if get_kv in done:
                    kvs = [get_kv.result()]
                    while not q.empty():
                        kvs.append(q.get_nowait())
                    resp = pb.WatchResponse(watch_id=0, events=[Event(type=Event.PUT, kv=kv) for kv in kvs])
                    self.f._header(resp.header)
                    yield resp
        finally:
            reader.cancel()
            for key, entry in mine:
                self.watchers[key].remove(entry)


def serve_threads(port: int, workers: int) -> None:
    floor = Floor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    pbg.add_KVServicer_to_server(ThreadKV(floor), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


async def serve_aio(port: int, hop: bool) -> None:
    floor = Floor()
    server = grpc.aio.server(options=OPTIONS)
    pbg.add_KVServicer_to_server(AioKV(floor, Hop() if hop else None), server)  # type: ignore[abstract]
    pbg.add_LeaseServicer_to_server(AioLease(floor), server)  # type: ignore[abstract]
    pbg.add_WatchServicer_to_server(AioWatch(floor), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--shape", choices=("threads", "aio"), default="threads")
    ap.add_argument("--workers", type=int, default=2, help="thread-pool workers (threads shape)")
    ap.add_argument("--uvloop", action="store_true", help="run the aio shape on uvloop")
    ap.add_argument("--hop", action="store_true", help="aio writes wait for a writer-thread round trip")
    a = ap.parse_args()
    if a.shape == "threads":
        serve_threads(a.port, a.workers)
    else:
        if a.uvloop:
            import uvloop

            uvloop.install()
        asyncio.run(serve_aio(a.port, a.hop))


if __name__ == "__main__":
    main()
