"""Pre-serialized etcd requests, so the load client spends no time in protobuf per call.

Every workload sends the same bytes to every server. Keys are 8 bytes: one letter naming the
workload's key space, then a 7-byte big-endian counter. Values are 256 bytes.
"""

from __future__ import annotations

import struct

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb

VALUE = bytes(range(256))
VALUE_B = bytes(reversed(VALUE))
KEY_BYTES = 8

KV = "/etcdserverpb.KV/"
PUT = KV + "Put"
RANGE = KV + "Range"
DELETE = KV + "DeleteRange"
TXN = KV + "Txn"
WATCH = "/etcdserverpb.Watch/Watch"
LEASE_GRANT = "/etcdserverpb.Lease/LeaseGrant"
LEASE_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"
LEASE_REVOKE = "/etcdserverpb.Lease/LeaseRevoke"

_Q = struct.Struct(">Q")


def key(space: bytes, n: int) -> bytes:
    """The n-th 8-byte key of a key space (one letter)."""
    return space + _Q.pack(n)[1:]


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# A PutRequest is field 1 (key) then field 2 (value); we splice the key into fixed framing.
_PUT_HEAD = b"\x0a\x08"
_PUT_TAIL = pb.PutRequest(value=VALUE).SerializeToString()


def put(k: bytes, value: bytes = VALUE) -> bytes:
    """PutRequest(key=k, value=value) as wire bytes (k must be 8 bytes, value 256)."""
    return _PUT_HEAD + k + (_PUT_TAIL if value is VALUE else _PUT_TAIL[:3] + value)


def get(k: bytes, serializable: bool) -> bytes:
    return pb.RangeRequest(key=k, serializable=serializable).SerializeToString()


def range_prefix(prefix: bytes) -> bytes:
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix)).SerializeToString()


def delete(k: bytes) -> bytes:
    return pb.DeleteRangeRequest(key=k).SerializeToString()


def cas(k: bytes, expect: bytes, new: bytes) -> bytes:
    """Txn: if value(k) == expect then put(k, new) else range(k)."""
    return pb.TxnRequest(
        compare=[pb.Compare(key=k, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=expect)],
        success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=new))],
        failure=[pb.RequestOp(request_range=pb.RangeRequest(key=k))],
    ).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


def put_batch(keys: list[bytes], value: bytes = VALUE) -> bytes:
    """One Txn that puts every key (loads data quickly, never timed): TxnRequest.success (field
    2) of RequestOp.request_put (field 2) spliced as bytes, since building a million protobuf
    objects would make the client, not the server, the limit of a scale load."""
    tail = _field(2, value) if value else b""  # proto3 leaves an empty value out
    return b"".join(_field(2, _field(2, _field(1, k) + tail)) for k in keys)


def watch_create(k: bytes) -> bytes:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=k)).SerializeToString()


def lease_grant(ttl: int) -> bytes:
    return pb.LeaseGrantRequest(TTL=ttl).SerializeToString()


def lease_keepalive(lease_id: int) -> bytes:
    return pb.LeaseKeepAliveRequest(ID=lease_id).SerializeToString()


def lease_revoke(lease_id: int) -> bytes:
    return pb.LeaseRevokeRequest(ID=lease_id).SerializeToString()
