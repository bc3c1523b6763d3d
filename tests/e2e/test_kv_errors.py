"""Every refused request: the right gRPC code, etcd's message, and nothing written."""

from __future__ import annotations

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc

IA = grpc.StatusCode.INVALID_ARGUMENT


def op_put(k: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"v"))


CASES = [
    ("Range", pb.RangeRequest(), IA, "etcdserver: key is not provided"),
    (
        "Range",
        pb.RangeRequest(key=b"a", revision=99),
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    ),
    (
        "Range",
        pb.RangeRequest(key=b"a", sort_target=99),
        IA,
        "etcdserver: invalid sort_target 99: must be 0..4",
    ),
    ("Range", pb.RangeRequest(key=b"a", sort_order=7), IA, "etcdserver: invalid sort_order 7: must be 0..2"),
    ("Put", pb.PutRequest(value=b"v"), IA, "etcdserver: key is not provided"),
    (
        "Put",
        pb.PutRequest(key=b"a", lease=42),
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    ),
    ("Put", pb.PutRequest(key=b"a", ignore_value=True), IA, "etcdserver: key not found"),
    ("Put", pb.PutRequest(key=b"a", ignore_lease=True), IA, "etcdserver: key not found"),
    ("Put", pb.PutRequest(key=b"a", value=b"x", ignore_value=True), IA, "etcdserver: value is provided"),
    ("Put", pb.PutRequest(key=b"a", lease=1, ignore_lease=True), IA, "etcdserver: lease is provided"),
    ("Put", pb.PutRequest(key=b"a", lease=-1), IA, "etcdserver: invalid lease -1: must be >= 0"),
    (
        "Put",
        pb.PutRequest(key=b"k" * 1537, value=b"v"),
        IA,
        "etcdserver: key is too large: 1537 bytes, limit 1536 (--max-key-bytes)",
    ),
    ("DeleteRange", pb.DeleteRangeRequest(), IA, "etcdserver: key is not provided"),
    (
        "Txn",
        pb.TxnRequest(success=[op_put(b"k%d" % i) for i in range(129)]),
        IA,
        "etcdserver: too many operations in txn request",
    ),
    (
        "Txn",
        pb.TxnRequest(success=[op_put(b"a"), op_put(b"a")]),
        IA,
        "etcdserver: duplicate key given in txn request",
    ),
    ("Txn", pb.TxnRequest(success=[pb.RequestOp()]), IA, "etcdserver: key not found"),
    ("Txn", pb.TxnRequest(compare=[pb.Compare()]), IA, "etcdserver: key is not provided"),
    (
        "Txn",
        pb.TxnRequest(compare=[pb.Compare(key=b"a", target=9)]),
        IA,
        "etcdserver: invalid compare target 9: must be 0..4",
    ),
    (
        "Txn",
        pb.TxnRequest(success=[op_put(b"a"), pb.RequestOp(request_put=pb.PutRequest(key=b"b", lease=77))]),
        grpc.StatusCode.NOT_FOUND,
        "etcdserver: requested lease not found",
    ),
    (
        "Compact",
        pb.CompactionRequest(revision=99),
        grpc.StatusCode.OUT_OF_RANGE,
        "etcdserver: mvcc: required revision is a future revision",
    ),
]


@pytest.mark.parametrize(
    ("method", "req", "code", "message"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_refused_with_etcds_error_and_nothing_written(
    shared_metastore: Proc, method: str, req: object, code: grpc.StatusCode, message: str
) -> None:
    with grpc.insecure_channel(shared_metastore.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            getattr(kv, method)(req, timeout=5)
        assert (exc.value.code(), exc.value.details()) == (code, message)
        after = kv.Range(pb.RangeRequest(key=b"\0", range_end=b"\0"), timeout=5)
        assert after.header.revision == 1 and after.count == 0


def test_request_too_large(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        big = pb.TxnRequest(success=[op_put(b"k%d" % i) for i in range(2)])
        big.success[0].request_put.value = b"x" * (1 << 20)
        big.success[1].request_put.value = b"x" * (1 << 20)
        with pytest.raises(grpc.RpcError) as exc:
            kv.Txn(big, timeout=5)
        assert (exc.value.code(), exc.value.details()) == (IA, "etcdserver: request is too large")
        with pytest.raises(grpc.RpcError) as exc:
            kv.Put(pb.PutRequest(key=b"k", value=b"x" * (5 << 20)), timeout=5)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_malformed_protobuf_gets_a_fixed_message(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        raw = ch.unary_unary("/etcdserverpb.KV/Put", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as exc:
            raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # a length that runs past the end
        assert exc.value.code() == IA
        assert exc.value.details() == "grpc: error unmarshalling request"
        # and the daemon keeps serving
        kv = rpc_pb2_grpc.KVStub(ch)
        assert kv.Put(pb.PutRequest(key=b"a", value=b"b"), timeout=5).header.revision == 2


def test_compacted_errors(kv: rpc_pb2_grpc.KVStub) -> None:
    for i in range(3):
        kv.Put(pb.PutRequest(key=b"a", value=b"%d" % i))
    kv.Compact(pb.CompactionRequest(revision=3))
    for call, req in [
        (kv.Range, pb.RangeRequest(key=b"a", revision=2)),
        (kv.Compact, pb.CompactionRequest(revision=3)),
        (kv.Txn, pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a", revision=2))])),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            call(req, timeout=5)
        assert exc.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert exc.value.details() == "etcdserver: mvcc: required revision has been compacted"
    assert kv.Range(pb.RangeRequest(key=b"a", revision=3)).kvs[0].value == b"1"
