"""Registers servicers with grpc.aio, wrapping every method once, at start-up.

Each method's behaviour is wrapped by the error mapping (innermost), then by
the layers the server passes in, outermost last: the reliability layer adds
recovery -> limits -> auth this way, so nothing is rebuilt per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from metastore_core import errors
from metastore_core.server.status import to_status

MALFORMED_MESSAGE = "grpc: error unmarshalling request"
Behaviour = Callable[..., Any]


@dataclass(frozen=True)
class MethodInfo:
    """What a layer may want to know about the method it wraps."""

    service: str  # e.g. "etcdserverpb.KV"
    name: str  # e.g. "Range"
    full: str  # e.g. "/etcdserverpb.KV/Range"
    client_streaming: bool
    server_streaming: bool
    request_type: type[Message]


Layer = Callable[[MethodInfo, Behaviour], Behaviour]


class _Malformed:
    """Stands in for a request that did not decode, so the handler can refuse it by name."""


MALFORMED = _Malformed()


def _deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    parse = cls.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RuntimeError, ValueError):
            return MALFORMED

    return deserialize


def _map_errors(info: MethodInfo, fn: Behaviour) -> Behaviour:
    """Turn engine errors into etcd's gRPC status; refuse undecodable requests."""
    if not info.server_streaming:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is MALFORMED:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
            try:
                return await fn(request, context)
            except errors.MetastoreError as exc:
                code, msg = to_status(exc)
                await context.abort(code, msg)

        return unary

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        try:
            async for item in fn(request, context):
                yield item
        except errors.MetastoreError as exc:
            code, msg = to_status(exc)
            await context.abort(code, msg)

    return streaming


async def checked_stream(requests: Any) -> Any:
    """Iterate a request stream, raising on a message that did not decode."""
    async for req in requests:
        if req is MALFORMED:
            raise errors.InvalidRequest(MALFORMED_MESSAGE)
        yield req


def service_handler(
    desc: ServiceDescriptor,
    servicer: object,
    message_types: dict[str, type[Message]],
    layers: Sequence[Layer] = (),
) -> grpc.GenericRpcHandler:
    """A generic handler for every method of desc implemented by servicer."""
    handlers = {}
    for m in desc.methods:
        req_cls = message_types[m.input_type.full_name]
        resp_cls = message_types[m.output_type.full_name]
        info = MethodInfo(
            service=desc.full_name,
            name=m.name,
            full=f"/{desc.full_name}/{m.name}",
            client_streaming=m.client_streaming,
            server_streaming=m.server_streaming,
            request_type=req_cls,
        )
        fn: Behaviour = getattr(servicer, m.name)
        fn = _map_errors(info, fn)
        for layer in layers:
            fn = layer(info, fn)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = kind(
            fn,
            request_deserializer=_deserializer(req_cls),
            response_serializer=resp_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)


def message_types(*modules: Any) -> dict[str, type[Message]]:
    """Full proto name -> message class, for the top-level messages of _pb2 modules."""
    out: dict[str, type[Message]] = {}
    for mod in modules:
        for mdesc in mod.DESCRIPTOR.message_types_by_name.values():
            out[mdesc.full_name] = getattr(mod, mdesc.name)
    return out
