"""Protobuf wire framing for replies built in pieces, so a big reply never costs one long step.

A big Range's KeyValues are already serialized in the store (mvcc/store.py `kv_bytes`); framing
each as a `kvs` field is all a reply needs, ten times cheaper than building a message per key,
and a reply made of pieces can be built between yields to the event loop instead of being
serialized in one C call (37 MB took 0.15-0.35 s). Concatenated fields are a valid message
(protobuf's merge rule), so a reply is: header field + kvs fields + scalar fields, each framed
here. Field numbers are etcd's (rpc.proto); tests/unit/test_wire.py checks every frame against
the protobuf library's own encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# RangeResponse
RANGE_HEADER, RANGE_KVS, RANGE_MORE, RANGE_COUNT = 1, 2, 3, 4
# TxnResponse
TXN_HEADER, TXN_SUCCEEDED, TXN_RESPONSES = 1, 2, 3
# ResponseOp (oneof)
OP_RANGE, OP_TXN = 1, 4

_LEN = 2  # wire type: length-delimited
_VARINT = 0


class Encoded:
    """A reply already serialized; the gRPC binding sends `data` as it is.

    Not a bytes subclass: grpc's Cython layer takes exactly bytes."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def varint(n: int) -> bytes:
    """n as a protobuf varint (negative int64 values take ten bytes, as protobuf writes them)."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# One byte per tag for the small field numbers used here.
_TAGS = {(f, w): varint(f << 3 | w) for f in range(1, 16) for w in (_VARINT, _LEN)}


def tag_len(number: int, size: int) -> bytes:
    """The tag and length prefix of a length-delimited field of `size` bytes."""
    return _TAGS[number, _LEN] + varint(size)


# The tag and length of a RangeResponse.kvs field, by the KeyValue's length, for the lengths a
# small KeyValue has: framing a key is then one list lookup (a Range builds one per key).
KVS_FRAMES = [tag_len(RANGE_KVS, n) for n in range(1 << 14)]


def kvs_frame(size: int) -> bytes:
    """The tag and length of a kvs field holding a KeyValue of `size` bytes."""
    return KVS_FRAMES[size] if size < len(KVS_FRAMES) else tag_len(RANGE_KVS, size)


def scalar(number: int, value: int) -> bytes:
    """A varint field (int64, bool); empty for 0, as proto3 leaves defaults out."""
    return _TAGS[number, _VARINT] + varint(value) if value else b""


@dataclass
class Body:
    """A message in pieces: its fields, in order, and their total size."""

    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    def add(self, data: bytes) -> None:
        if data:
            self.parts.append(data)
            self.size += len(data)

    def add_field(self, number: int, payload: bytes) -> None:
        """A length-delimited field holding payload (a sub-message or bytes)."""
        self.add(tag_len(number, len(payload)))
        self.add(payload)

    def add_body(self, number: int, body: Body) -> None:
        """A length-delimited field holding another body, without joining it first."""
        self.add(tag_len(number, body.size))
        self.parts.extend(body.parts)
        self.size += body.size

    def encoded(self) -> Encoded:
        return Encoded(b"".join(self.parts))
