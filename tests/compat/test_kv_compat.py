"""One KV scenario against a real etcd and against metastore: the answers must be identical.

Responses are compared as protobuf text with the per-server identity
(cluster_id, member_id, raft_term) blanked; errors by code and message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc


def put(k: bytes, v: bytes = b"", **kw: Any) -> pb.PutRequest:
    return pb.PutRequest(key=k, value=v, **kw)


def op(r: Message) -> pb.RequestOp:
    field = {
        pb.PutRequest: "request_put",
        pb.RangeRequest: "request_range",
        pb.DeleteRangeRequest: "request_delete_range",
        pb.TxnRequest: "request_txn",
    }[type(r)]
    return pb.RequestOp(**{field: r})


def cmp(key: bytes, target: str, result: str, **value: Any) -> pb.Compare:
    return pb.Compare(
        key=key, target=getattr(pb.Compare, target), result=getattr(pb.Compare, result), **value
    )


ALL = {"key": b"\0", "range_end": b"\0"}
Step = tuple[str, Message]
SCENARIO: list[Step] = [
    ("Range", pb.RangeRequest(**ALL)),
    ("Put", put(b"a", b"1")),
    ("Put", put(b"a", b"2", prev_kv=True)),
    ("Put", put(b"b", b"x")),
    ("Put", put(b"c/1", b"z")),
    ("Put", put(b"c/2", b"y")),
    ("Put", put(b"c/3", b"y")),
    ("Put", put(b"a", ignore_value=True, prev_kv=True)),
    ("Range", pb.RangeRequest(**ALL)),
    ("Range", pb.RangeRequest(key=b"c/", range_end=b"c0", limit=2)),
    ("Range", pb.RangeRequest(key=b"c/", range_end=b"c0", count_only=True)),
    (
        "Range",
        pb.RangeRequest(key=b"c/", range_end=b"c0", keys_only=True, sort_order=pb.RangeRequest.DESCEND),
    ),
    (
        "Range",
        pb.RangeRequest(
            **ALL, sort_target=pb.RangeRequest.CREATE, sort_order=pb.RangeRequest.DESCEND, limit=3
        ),
    ),
    ("Range", pb.RangeRequest(**ALL, min_mod_revision=4, max_mod_revision=6)),
    ("Range", pb.RangeRequest(**ALL, min_create_revision=3)),
    ("Range", pb.RangeRequest(**ALL, revision=3)),
    ("Range", pb.RangeRequest(key=b"b", range_end=b"\0")),
    ("Range", pb.RangeRequest(key=b"zz")),
    ("Range", pb.RangeRequest(key=b"a", revision=1000)),
    ("Range", pb.RangeRequest()),
    (
        "Txn",
        pb.TxnRequest(
            compare=[cmp(b"a", "VALUE", "EQUAL", value=b"2")],
            success=[
                op(put(b"a", b"3")),
                op(pb.RangeRequest(key=b"a")),
                op(pb.DeleteRangeRequest(key=b"b", prev_kv=True)),
            ],
            failure=[op(put(b"f", b"1"))],
        ),
    ),
    (
        "Txn",
        pb.TxnRequest(
            compare=[cmp(b"a", "VERSION", "GREATER", version=10)],
            success=[op(put(b"s", b"1"))],
            failure=[
                op(pb.RangeRequest(key=b"c/", range_end=b"c0")),
                op(
                    pb.TxnRequest(
                        compare=[cmp(b"missing", "CREATE", "EQUAL", create_revision=0)],
                        success=[op(put(b"n", b"nested")), op(pb.RangeRequest(key=b"n"))],
                    )
                ),
            ],
        ),
    ),
    (
        "Txn",
        pb.TxnRequest(
            compare=[cmp(b"missing", "VALUE", "EQUAL", value=b"")], failure=[op(pb.RangeRequest(key=b"a"))]
        ),
    ),
    (
        "Txn",
        pb.TxnRequest(compare=[cmp(b"c/", "MOD", "LESS", mod_revision=100, range_end=b"c0")], success=[]),
    ),
    (
        "Txn",
        pb.TxnRequest(
            compare=[cmp(b"a", "LEASE", "EQUAL", lease=0)], success=[op(pb.DeleteRangeRequest(key=b"nope"))]
        ),
    ),
    ("Txn", pb.TxnRequest(success=[op(put(b"d", b"1")), op(put(b"d", b"2"))])),
    ("Txn", pb.TxnRequest(success=[op(pb.DeleteRangeRequest(key=b"c/", range_end=b"c0")), op(put(b"c/9"))])),
    ("Txn", pb.TxnRequest(success=[op(put(b"t%d" % i)) for i in range(129)])),
    ("Txn", pb.TxnRequest(success=[op(put(b"t%d" % i, b"v")) for i in range(128)])),
    ("Txn", pb.TxnRequest(success=[pb.RequestOp()])),
    ("Txn", pb.TxnRequest(success=[op(put(b"x", b"1", lease=999))])),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"t", range_end=b"u", prev_kv=False)),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"c/", range_end=b"c0", prev_kv=True)),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"nothing")),
    ("Put", put(b"a", b"v", ignore_lease=True)),
    ("Put", put(b"q", b"v", ignore_lease=True)),
    ("Put", put(b"q", b"v", ignore_value=True)),
    ("Put", put(b"q", b"v", lease=12345)),
    ("Put", put(b"", b"v")),
    ("Compact", pb.CompactionRequest(revision=5)),
    ("Compact", pb.CompactionRequest(revision=5)),
    ("Compact", pb.CompactionRequest(revision=4)),
    ("Compact", pb.CompactionRequest(revision=10_000)),
    ("Range", pb.RangeRequest(**ALL, revision=4)),
    ("Range", pb.RangeRequest(**ALL, revision=5)),
    ("Range", pb.RangeRequest(**ALL)),
    ("DeleteRange", pb.DeleteRangeRequest(key=b"\0", range_end=b"\0")),
    ("Range", pb.RangeRequest(**ALL, revision=6)),
    ("Put", put(b"a", b"reborn")),
    ("Range", pb.RangeRequest(key=b"a")),
]


def normalise(resp: Message) -> str:
    def blank(m: Message) -> None:
        for field, value in m.ListFields():
            if field.name == "header":
                value.cluster_id = value.member_id = value.raft_term = 0
            elif field.message_type is not None:
                for item in value if field.is_repeated else [value]:
                    blank(item)

    copy = type(resp)()
    copy.CopyFrom(resp)
    blank(copy)
    return text_format.MessageToString(copy, as_one_line=True)


def run(endpoint: str) -> list[str]:
    out = []
    with grpc.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for method, req in SCENARIO:
            call: Callable[..., Message] = getattr(kv, method)
            try:
                out.append(f"{method}: {normalise(call(req, timeout=10))}")
            except grpc.RpcError as exc:
                out.append(f"{method}: ERROR {exc.code().name} {exc.details()}")
    return out


def test_kv_scenario_matches_etcd(etcd: Proc, metastore: Proc) -> None:
    want = run(etcd.endpoint)
    got = run(metastore.endpoint)
    diffs = [
        f"step {i} {SCENARIO[i][0]}:\n  etcd:      {w}\n  metastore: {g}"
        for i, (w, g) in enumerate(zip(want, got, strict=True))
        if w != g
    ]
    assert not diffs, "\n".join(diffs)
