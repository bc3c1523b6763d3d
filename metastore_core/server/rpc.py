"""The gRPC binding: registers servicers with grpc.aio, wrapping every method once, at start-up.

Per method, innermost first: the servicer's method, the refusal of undecodable
requests, then the layers the server passes in (recovery -> limits -> auth,
outermost last), then this binding, which turns a domain error into its status
(server/status.py) and nothing else. Servicers never see a grpc context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from metastore_core import errors
from metastore_core.engine.wire import Encoded
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo, method_info
from metastore_core.server.status import code_of

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


class _Malformed:
    """Stands in for a request that did not decode, so the chain can refuse (and count) it."""


MALFORMED = _Malformed()


def grpc_status(exc: errors.MetastoreError) -> tuple[grpc.StatusCode, str]:
    """The gRPC (code, message) of a domain error."""
    return _GRPC_CODES[code_of(exc)], exc.text


class GrpcCall(Call):
    """A Call carried by gRPC."""

    __slots__ = ("_context", "_peer")

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.auth = None
        self._context = context
        self._peer: str | None = None

    def peer(self) -> str:
        peer = self._peer
        if peer is None:  # asked by the connection and the per-client limits: ask grpc once
            peer = self._peer = str(self._context.peer())
        return peer

    def metadata(self, key: str) -> str | None:
        for k, v in self._context.invocation_metadata() or ():
            if k == key:
                return str(v)
        return None


def _deserializer(cls: type[Message]) -> Callable[[bytes], Any]:
    parse = cls.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except (DecodeError, RuntimeError, ValueError):
            return MALFORMED

    return deserialize


def _serializer(cls: type[Message]) -> Callable[[Any], bytes]:
    """cls's serializer; a reply a servicer built already serialized (Encoded) goes as it is."""
    serialize = cls.SerializeToString

    def encode(message: Any) -> bytes:
        if type(message) is Encoded:
            return message.data
        return serialize(message)

    return encode


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for req in requests:
        if req is MALFORMED:
            raise errors.Malformed()
        yield req


def _refuse_malformed(info: MethodInfo, fn: Behaviour) -> Behaviour:
    """The innermost wrapper: a request that did not decode never reaches the servicer."""
    if info.client_streaming:
        return lambda requests, call: fn(_checked(requests), call)

    def check(request: Any, call: Call) -> Any:
        if request is MALFORMED:
            raise errors.Malformed()
        return fn(request, call)

    return check


def _grpc_behaviour(info: MethodInfo, fn: Behaviour) -> Callable[..., Any]:
    if not info.server_streaming:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(request, GrpcCall(context))
            except errors.MetastoreError as exc:
                await context.abort(*grpc_status(exc))

        return unary

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async with aclosing(fn(request, GrpcCall(context))) as items:
                async for item in items:
                    yield item
        except errors.MetastoreError as exc:
            await context.abort(*grpc_status(exc))

    return streaming


@dataclass(frozen=True)
class Method:
    """One method to serve: what it is, what implements it, its message classes."""

    info: MethodInfo
    fn: Behaviour
    request: type[Message]
    response: type[Message]


def handler(service: str, methods: Sequence[Method], layers: Sequence[Layer]) -> grpc.GenericRpcHandler:
    """A generic handler serving methods of service, each wrapped once."""
    handlers = {}
    for m in methods:
        fn = _refuse_malformed(m.info, m.fn)
        if m.info.policy.layers:
            for layer in layers:
                fn = layer(m.info, fn)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(m.info.client_streaming, m.info.server_streaming)]
        handlers[m.info.name] = make(
            _grpc_behaviour(m.info, fn),
            request_deserializer=_deserializer(m.request),
            response_serializer=_serializer(m.response),
        )
    return grpc.method_handlers_generic_handler(service, handlers)


def service_methods(desc: ServiceDescriptor, servicer: object, modules: Sequence[Any]) -> list[Method]:
    """Every method of desc, implemented by servicer's method of the same name."""
    types = message_types(*modules)
    out = []
    for m in desc.methods:
        req = types[m.input_type.full_name]
        info = method_info(desc.full_name, m.name, m.client_streaming, m.server_streaming, req)
        out.append(Method(info, getattr(servicer, m.name), req, types[m.output_type.full_name]))
    return out


def message_types(*modules: Any) -> dict[str, type[Message]]:
    """Full proto name -> message class, for the top-level messages of _pb2 modules."""
    out: dict[str, type[Message]] = {}
    for mod in modules:
        for mdesc in mod.DESCRIPTOR.message_types_by_name.values():
            out[mdesc.full_name] = getattr(mod, mdesc.name)
    return out
