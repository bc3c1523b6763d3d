"""The gRPC binding: registers servicers with grpc.aio, wrapping every method once, at start-up.

Per method, innermost first: the servicer's method, the refusal of undecodable
requests, then the layers the server passes in (recovery -> limits -> auth,
outermost last), then this binding, which turns a domain error into its status
(server/status.py) and nothing else. Servicers never see a grpc context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from metastore_core import errors
from metastore_core.engine.auth import ANONYMOUS
from metastore_core.engine.wire import Encoded
from metastore_core.server.methods import Behaviour, Call, Layer, Method, MethodInfo, wrap
from metastore_core.server.status import code_of

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


class _Malformed:
    """Stands in for a request that did not decode, so the chain can refuse (and count) it."""


MALFORMED = _Malformed()


def grpc_status(exc: errors.MetastoreError) -> tuple[grpc.StatusCode, str]:
    """The gRPC (code, message) of a domain error."""
    return _GRPC_CODES[code_of(exc)], exc.text


Peers = Callable[[str], str]  # the peer gRPC reports -> the client (a relay's, see front.py)


def _same(peer: str) -> str:
    return peer


class GrpcCall(Call):
    """A Call carried by gRPC."""

    __slots__ = ("_context", "_peer", "_peers")

    def __init__(self, context: grpc.aio.ServicerContext, peers: Peers = _same) -> None:
        self.auth = ANONYMOUS
        self._context = context
        self._peers = peers
        self._peer: str | None = None

    def peer(self) -> str:
        peer = self._peer
        if peer is None:  # asked by the connection and the per-client limits: ask grpc once
            peer = self._peer = self._peers(str(self._context.peer()))
        return peer

    def metadata(self, key: str) -> str | None:
        for k, v in self._context.invocation_metadata() or ():
            if k == key:
                return str(v)
        return None

    def common_name(self) -> str:
        # grpc fills x509_common_name only for a certificate that verified against the CA
        names = (self._context.auth_context() or {}).get("x509_common_name") or ()
        return bytes(names[0]).decode(errors="replace") if names else ""


class Bytes(Protocol):
    """Where message sizes are added up (layers/metrics.Traffic)."""

    sent: int
    received: int


def _deserializer(cls: type[Message], traffic: Bytes | None) -> Callable[[bytes], Any]:
    parse = cls.FromString

    def deserialize(data: bytes) -> Any:
        if traffic is not None:
            traffic.received += len(data)
        try:
            return parse(data)
        except (DecodeError, RuntimeError, ValueError):
            return MALFORMED

    return deserialize


def _serializer(cls: type[Message], traffic: Bytes | None) -> Callable[[Any], bytes]:
    """cls's serializer; a reply a servicer built already serialized (Encoded) goes as it is."""
    encode = cls.SerializeToString

    def serialize(message: Any) -> bytes:
        data = message.data if type(message) is Encoded else encode(message)
        if traffic is not None:
            traffic.sent += len(data)
        return data

    return serialize


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


def _grpc_behaviour(info: MethodInfo, fn: Behaviour, peers: Peers) -> Callable[..., Any]:
    if not info.server_streaming:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await fn(request, GrpcCall(context, peers))
            except errors.MetastoreError as exc:
                await context.abort(*grpc_status(exc))

        return unary

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async with aclosing(fn(request, GrpcCall(context, peers))) as items:
                async for item in items:
                    yield item
        except errors.MetastoreError as exc:
            await context.abort(*grpc_status(exc))

    return streaming


def handler(
    service: str,
    methods: Sequence[Method],
    layers: Sequence[Layer],
    peers: Peers = _same,
    traffic: Bytes | None = None,
) -> grpc.GenericRpcHandler:
    """A generic handler serving methods of service, each wrapped once; peers names the client
    behind a relayed connection; traffic (if given) adds up the bytes of every message."""
    handlers = {}
    for m in methods:
        fn = wrap(m.info, _refuse_malformed(m.info, m.fn), layers)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(m.info.client_streaming, m.info.server_streaming)]
        handlers[m.info.name] = make(
            _grpc_behaviour(m.info, fn, peers),
            request_deserializer=_deserializer(m.request, traffic),
            response_serializer=_serializer(m.response, traffic),
        )
    return grpc.method_handlers_generic_handler(service, handlers)
