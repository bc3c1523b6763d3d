"""Servicers and layers need no gRPC: called with a plain Call, as etcd's JSON gateway will call them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.layers import reliability_layers
from metastore_core.server.layers.limits import Limiter
from metastore_core.server.layers.metrics import RequestMetrics
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.methods import Behaviour, Call, method_info
from metastore_core.server.services.kv import KVService
from metastore_core.server.services.lease import LeaseService
from metastore_core.server.services.watch import WatchService
from metastore_core.server.status import Code, code_of
from metastore_core.storage.memory import MemoryStorage


def layered(servicer: object, service: str, name: str, streaming: bool = False) -> Behaviour:
    fn: Behaviour = getattr(servicer, name)
    info = method_info(service, name, streaming, streaming, object)
    for layer in reliability_layers(Recovery(), Limiter(100, 30), RequestMetrics()):
        fn = layer(info, fn)
    return fn


async def test_kv_and_lease_through_the_layers_without_a_transport() -> None:
    node = Node(MemoryStorage(), Config(backend="memory"))
    node.load()
    kv, leases = KVService(node, Config().limits), LeaseService(node)
    put = layered(kv, "etcdserverpb.KV", "Put")
    rng = layered(kv, "etcdserverpb.KV", "Range")
    grant = layered(leases, "etcdserverpb.Lease", "LeaseGrant")
    lease = (await grant(pb.LeaseGrantRequest(TTL=30), Call())).ID
    assert lease > 0
    resp = await put(pb.PutRequest(key=b"k", value=b"v", lease=lease), Call())
    assert resp.header.revision == 2 and resp.header.member_id == node.figures.member_id
    got = await rng(pb.RangeRequest(key=b"k"), Call())
    assert [(x.key, x.value, x.lease) for x in got.kvs] == [(b"k", b"v", lease)]
    with pytest.raises(errors.EmptyKey) as info:
        await put(pb.PutRequest(value=b"v"), Call())
    assert code_of(info.value) is Code.INVALID_ARGUMENT
    with pytest.raises(errors.FutureRevision):
        await rng(pb.RangeRequest(key=b"k", revision=99), Call())
    node.close()


async def test_a_watch_stream_without_a_transport() -> None:
    node = Node(MemoryStorage(), Config(backend="memory"))
    node.load()
    watch = layered(WatchService(node), "etcdserverpb.Watch", "Watch", streaming=True)
    asked = asyncio.Event()

    async def requests() -> AsyncIterator[pb.WatchRequest]:
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"a", range_end=b"b"))
        await asked.wait()

    stream = watch(requests(), Call())
    created = await anext(stream)
    assert created.created and created.watch_id == 0
    await node.write(pb.PutRequest(key=b"apple", value=b"1"))
    event = await anext(stream)
    assert [(e.kv.key, e.kv.value) for e in event.events] == [(b"apple", b"1")]
    assert node.figures.watchers == 1
    asked.set()
    await stream.aclose()
    assert node.figures.watchers == 0 and node.figures.watch_streams == 0
    node.close()
