"""The gateway's JSON codec (what etcd 3.4.23's grpc-gateway writes, what it reads), and the relay's peers."""

from __future__ import annotations

import json

import pytest

from metastore_core import errors
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.server.front import Relayed
from metastore_core.server.http import jsonpb
from metastore_core.server.rpc import GrpcCall


def test_replies_use_proto_names_int64_strings_base64_and_leave_zero_fields_out() -> None:
    reply = pb.RangeResponse(count=1)
    reply.header.revision = 2
    reply.header.cluster_id = 2**64 - 1
    reply.kvs.add(key=b"foo", create_revision=2, mod_revision=2, version=1, value=b"bar")
    # etcd 3.4.23's gateway, byte for byte, for the same reply
    assert jsonpb.encode(reply) == (
        b'{"header":{"cluster_id":"18446744073709551615","revision":"2"},"kvs":[{"key":"Zm9v",'
        b'"create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}'
    )
    assert jsonpb.encode(pb.HashResponse(hash=4_000_000_000)) == b'{"hash":4000000000}'  # uint32: a number
    event = pb.WatchResponse(events=[{"type": "DELETE", "kv": {"key": b"k"}}])
    assert json.loads(jsonpb.encode(event)) == {"events": [{"type": "DELETE", "kv": {"key": "aw=="}}]}
    assert jsonpb.encode(pb.WatchResponse(watch_id=0, created=True)) == b'{"created":true}'
    ttl = pb.LeaseTimeToLiveResponse(ID=7, TTL=5, grantedTTL=10)
    assert json.loads(jsonpb.encode(ttl)) == {"ID": "7", "TTL": "5", "grantedTTL": "10"}


def test_requests_take_proto_or_camel_names_and_int64_as_string_or_number() -> None:
    body = b'{"key":"Zm9v","keysOnly":true,"sort_order":"DESCEND","sortTarget":1,"limit":"5","revision":3}'
    r = jsonpb.decode_one(body, pb.RangeRequest)
    assert (r.key, r.keys_only, r.sort_order, r.sort_target, r.limit, r.revision) == (
        b"foo",
        True,
        pb.RangeRequest.DESCEND,
        pb.RangeRequest.VERSION,
        5,
        3,
    )
    txn = jsonpb.decode_one(
        b'{"compare":[{"key":"YQ==","target":"VALUE","value":"Yg=="}],'
        b'"success":[{"requestPut":{"key":"YQ==","value":"Yw=="}}],"failure":[{"request_range":{"key":"YQ=="}}]}',
        pb.TxnRequest,
    )
    assert txn.success[0].request_put.value == b"c" and txn.failure[0].request_range.key == b"a"


def test_empty_and_null_bodies_are_the_empty_request_and_only_the_first_value_counts() -> None:
    assert jsonpb.decode_one(b"", pb.RangeRequest) == pb.RangeRequest()
    assert jsonpb.decode_one(b" \r\n", pb.RangeRequest) == pb.RangeRequest()
    assert jsonpb.decode_one(b"null", pb.RangeRequest) == pb.RangeRequest()
    assert jsonpb.decode_one(b'{"key":"YQ=="} {"key":"Yg=="}', pb.RangeRequest).key == b"a"  # as etcd


def test_a_stream_body_is_every_json_value_in_order() -> None:
    body = b'{"ID":"1"}{"ID":2}\n {"ID":"3"}\n'
    assert [r.ID for r in jsonpb.decode_all(body, pb.LeaseKeepAliveRequest)] == [1, 2, 3]
    assert jsonpb.decode_all(b"  ", pb.LeaseKeepAliveRequest) == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"key":', "Expecting value"),  # cut short
        (b"{'key': 1}", "Expecting property name"),  # not JSON
        (b'{"key":5}', "key"),  # wrong type
        (b'{"limit":5.5}', "limit"),
        (b'{"limit":"many"}', "limit"),
        (b'{"limit":1e30}', "limit"),  # out of int64
        (b'{"sort_order":"BOGUS"}', "sort_order"),
        (b'{"bogus":1}', 'no field named "bogus"'),  # unknown field: refused, not ignored
        (b"[1,2]", "want an object, got list"),
        (b'"text"', "want an object, got str"),
        (b'{"key":"\xff"}', "utf-8"),
        (b"[" * 100_000, "recursion"),  # nesting deep enough to exhaust Python's stack
    ],
)
def test_bad_json_is_malformed_naming_the_message_and_the_reason(body: bytes, why: str) -> None:
    for decode in (jsonpb.decode_one, jsonpb.decode_all):
        with pytest.raises(errors.Malformed) as raised:
            decode(body, pb.RangeRequest)
        assert raised.value.text.startswith("invalid JSON for etcdserverpb.RangeRequest: ")
        assert why.lower() in raised.value.text.lower()
        assert "\n" not in raised.value.text


def test_a_deeply_nested_txn_is_refused_not_a_crash() -> None:
    body = b'{"success":[{"request_txn":' * 2000 + b"{}" + b"}]}" * 2000
    with pytest.raises(errors.Malformed):
        jsonpb.decode_one(body, pb.TxnRequest)


class _Context:
    """What GrpcCall reads of a grpc.aio context: the peer, as gRPC names it."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_a_relayed_grpc_call_names_the_client_behind_the_relay() -> None:
    relayed = Relayed()
    relayed.clients["ipv4:127.0.0.1:40001"] = "ipv4:192.0.2.7:5555"
    call = GrpcCall(_Context("ipv4:127.0.0.1:40001"), relayed.peer)  # type: ignore[arg-type]
    assert call.peer() == "ipv4:192.0.2.7:5555"
    direct = GrpcCall(_Context("ipv4:192.0.2.8:6000"), relayed.peer)  # type: ignore[arg-type]
    assert direct.peer() == "ipv4:192.0.2.8:6000"
