"""etcd's gateway JSON: protobuf messages as grpc-gateway v1 (jsonpb, OrigName) reads and writes them.

Out: proto field names (`create_revision`), int64/uint64 as strings, bytes as base64, enums by
name, fields at their zero value left out; compact, as Go's encoder writes it. In: proto or
camelCase names, int64 as a string or a number, enums by name or number. An unknown field is
refused (etcd 3.4 ignores it silently; a typo should not pass for an empty request). A body may
hold several JSON values in a row: a unary call reads the first, as etcd's does; a stream takes
each as one request message.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from metastore_core import errors

M = TypeVar("M", bound=Message)

_decoder = json.JSONDecoder()
_WHITESPACE = b" \t\r\n"


def encode(message: Message) -> bytes:
    """A message as etcd's gateway writes it."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return dumps(doc)


def dumps(doc: Any) -> bytes:
    """JSON with Go's compact separators."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _malformed(cls: type[Message], why: object) -> errors.Malformed:
    # json_format's messages may run on with a list of every field: the first line says it.
    detail = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
    return errors.Malformed(f"invalid JSON for {cls.DESCRIPTOR.full_name}: {detail}")


def _parse(doc: Any, cls: type[M]) -> M:
    message = cls()
    if doc is None:
        return message  # `null` reads as the empty request, as in Go
    if not isinstance(doc, dict):
        raise _malformed(cls, f"want an object, got {type(doc).__name__}")
    try:
        json_format.ParseDict(doc, message)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _malformed(cls, exc) from None
    return message


def decode_all(body: bytes, cls: type[M]) -> list[M]:
    """Every JSON value in body, in order, each as a message of cls; errors.Malformed on the first bad one."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise _malformed(cls, exc) from None
    out: list[M] = []
    at = 0
    end = len(text)
    while True:
        while at < end and text[at] in " \t\r\n":
            at += 1
        if at >= end:
            return out
        try:
            doc, at = _decoder.raw_decode(text, at)
        except (ValueError, RecursionError) as exc:
            raise _malformed(cls, exc) from None
        out.append(_parse(doc, cls))


def decode_one(body: bytes, cls: type[M]) -> M:
    """The request of a unary call: the body's first JSON value (an empty body is the empty message)."""
    if not body.strip(_WHITESPACE):
        return cls()
    try:
        text = body.decode()
        doc, _ = _decoder.raw_decode(text, len(text) - len(text.lstrip()))
    except (ValueError, RecursionError) as exc:
        raise _malformed(cls, exc) from None
    return _parse(doc, cls)
