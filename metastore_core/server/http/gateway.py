"""etcd's JSON gateway: POST /v3/... calls the servicers through the same layers as gRPC.

Each route is a method of the catalog's servicers, wrapped once by the layers gRPC uses
(recovery -> limits -> auth), so the engine, the limits, auth and recovery are the same; only
the metrics label differs (grpc_type `http_unary`, `http_server_stream`, `http_bidi_stream`).
Paths are etcd 3.4's (its protos' google.api.http options), under /v3 and /v3beta (which etcd
3.4 rewrites to /v3; /v3alpha is gone there too).

Answers as grpc-gateway v1 gives them: 200 and the reply as JSON (jsonpb.py); a refusal as
`{"error": msg, "message": msg, "code": <grpc code>}` with the code's HTTP status (status.py).
Streams (watch, keep-alive, snapshot, observe) answer with newline-delimited
`{"result": ...}` objects, one HTTP chunk each; an error after the first is a last
`{"error": {"grpc_code", "http_code", "message", "http_status"}}`. A streaming call's requests
are the JSON values of the body, all read before the first reply (etcd's gateway answers no
sooner either); the stream then runs until the servicer ends it (a keep-alive: after the last
request; a watch: when the client goes away, which frees its watchers at once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from http import HTTPStatus
from typing import Any

from metastore_core import errors
from metastore_core.engine.wire import Encoded
from metastore_core.server.http import jsonpb
from metastore_core.server.http.errors import HttpError
from metastore_core.server.http.messages import Request, Response
from metastore_core.server.http.router import Handler, Route
from metastore_core.server.methods import Behaviour, Call, Layer, Method, wrap
from metastore_core.server.status import Code, code_of, http_status

PREFIXES = ("/v3", "/v3beta")
KV, LEASE, CLUSTER = "etcdserverpb.KV", "etcdserverpb.Lease", "etcdserverpb.Cluster"
MAINTENANCE, AUTH = "etcdserverpb.Maintenance", "etcdserverpb.Auth"
LOCK, ELECTION = "v3lockpb.Lock", "v3electionpb.Election"

# path under a prefix -> (service, method). HashKV's path is Hash's in etcd's protos, and Hash
# wins there, so HashKV has no route.
PATHS: dict[str, tuple[str, str]] = {
    "/kv/range": (KV, "Range"),
    "/kv/put": (KV, "Put"),
    "/kv/deleterange": (KV, "DeleteRange"),
    "/kv/txn": (KV, "Txn"),
    "/kv/compaction": (KV, "Compact"),
    "/watch": ("etcdserverpb.Watch", "Watch"),
    "/lease/grant": (LEASE, "LeaseGrant"),
    "/lease/revoke": (LEASE, "LeaseRevoke"),
    "/kv/lease/revoke": (LEASE, "LeaseRevoke"),
    "/lease/keepalive": (LEASE, "LeaseKeepAlive"),
    "/lease/timetolive": (LEASE, "LeaseTimeToLive"),
    "/kv/lease/timetolive": (LEASE, "LeaseTimeToLive"),
    "/lease/leases": (LEASE, "LeaseLeases"),
    "/kv/lease/leases": (LEASE, "LeaseLeases"),
    "/cluster/member/add": (CLUSTER, "MemberAdd"),
    "/cluster/member/remove": (CLUSTER, "MemberRemove"),
    "/cluster/member/update": (CLUSTER, "MemberUpdate"),
    "/cluster/member/list": (CLUSTER, "MemberList"),
    "/cluster/member/promote": (CLUSTER, "MemberPromote"),
    "/maintenance/alarm": (MAINTENANCE, "Alarm"),
    "/maintenance/status": (MAINTENANCE, "Status"),
    "/maintenance/defragment": (MAINTENANCE, "Defragment"),
    "/maintenance/hash": (MAINTENANCE, "Hash"),
    "/maintenance/snapshot": (MAINTENANCE, "Snapshot"),
    "/maintenance/transfer-leadership": (MAINTENANCE, "MoveLeader"),
    "/maintenance/downgrade": (MAINTENANCE, "Downgrade"),
    "/auth/enable": (AUTH, "AuthEnable"),
    "/auth/disable": (AUTH, "AuthDisable"),
    "/auth/status": (AUTH, "AuthStatus"),
    "/auth/authenticate": (AUTH, "Authenticate"),
    "/auth/user/add": (AUTH, "UserAdd"),
    "/auth/user/get": (AUTH, "UserGet"),
    "/auth/user/list": (AUTH, "UserList"),
    "/auth/user/delete": (AUTH, "UserDelete"),
    "/auth/user/changepw": (AUTH, "UserChangePassword"),
    "/auth/user/grant": (AUTH, "UserGrantRole"),
    "/auth/user/revoke": (AUTH, "UserRevokeRole"),
    "/auth/role/add": (AUTH, "RoleAdd"),
    "/auth/role/get": (AUTH, "RoleGet"),
    "/auth/role/list": (AUTH, "RoleList"),
    "/auth/role/delete": (AUTH, "RoleDelete"),
    "/auth/role/grant": (AUTH, "RoleGrantPermission"),
    "/auth/role/revoke": (AUTH, "RoleRevokePermission"),
    "/lock/lock": (LOCK, "Lock"),
    "/lock/unlock": (LOCK, "Unlock"),
    "/election/campaign": (ELECTION, "Campaign"),
    "/election/proclaim": (ELECTION, "Proclaim"),
    "/election/leader": (ELECTION, "Leader"),
    "/election/observe": (ELECTION, "Observe"),
    "/election/resign": (ELECTION, "Resign"),
}

JSON = (("content-type", "application/json"),)


class HttpCall(Call):
    """A Call carried by the gateway: the token comes in the Authorization header, as etcd's
    gateway maps it; `Grpc-Metadata-<key>` headers are metadata too, as grpc-gateway passes them."""

    __slots__ = ("_request",)

    def __init__(self, request: Request) -> None:
        super().__init__()
        self._request = request

    def peer(self) -> str:
        return self._request.peer

    def metadata(self, key: str) -> str | None:
        if key == "authorization":
            return self._request.header("authorization")
        return self._request.header("grpc-metadata-" + key)

    def common_name(self) -> str:
        return self._request.common_name


def error_doc(code: Code, message: str) -> dict[str, Any]:
    """grpc-gateway v1's error body."""
    return {"error": message, "message": message, "code": int(code)}


def error_response(exc: errors.MetastoreError) -> Response:
    code = code_of(exc)
    return Response(http_status(code), JSON, jsonpb.dumps(error_doc(code, exc.text)))


def refusal(exc: HttpError) -> Response:
    """A request the HTTP shell refused (too large, too slow, not HTTP), in etcd's error body."""
    codes = {413: Code.RESOURCE_EXHAUSTED, 431: Code.RESOURCE_EXHAUSTED, 503: Code.UNAVAILABLE}
    code = codes.get(exc.status, Code.INVALID_ARGUMENT)
    return Response(exc.status, JSON, jsonpb.dumps(error_doc(code, exc.message)))


def _stream_error(exc: errors.MetastoreError) -> bytes:
    code = code_of(exc)
    status = http_status(code)
    doc = {"grpc_code": int(code), "http_code": status, "message": exc.text}
    doc["http_status"] = HTTPStatus(status).phrase
    return jsonpb.dumps({"error": doc}) + b"\n"


def _result(message: Any) -> bytes:
    return b'{"result":' + jsonpb.encode(message) + b"}\n"


def _decoding(method: Method) -> Behaviour:
    """The innermost step, under the layers (so a bad body is counted like a bad gRPC message):
    the body's JSON becomes the servicer's request, or its stream of requests."""
    fn, cls = method.fn, method.request
    if method.info.client_streaming:

        def stream(body: bytes, call: Call) -> Any:
            return fn(_feed(jsonpb.decode_all(body, cls)), call)

        return stream

    if method.info.server_streaming:
        return lambda body, call: fn(jsonpb.decode_one(body, cls), call)

    async def unary(body: bytes, call: Call) -> Any:
        return await fn(jsonpb.decode_one(body, cls), call)

    return unary


async def _feed(requests: list[Any]) -> AsyncIterator[Any]:
    for r in requests:
        yield r


def handler(method: Method, layers: Sequence[Layer]) -> Handler:
    """The HTTP handler of one method, wrapped once by the layers."""
    info = dataclasses.replace(method.info, http=True)
    fn = wrap(info, _decoding(method), layers)
    if not info.server_streaming:

        async def unary(request: Request) -> Response:
            try:
                reply = await fn(request.body, HttpCall(request))
            except errors.MetastoreError as exc:
                return error_response(exc)
            if type(reply) is Encoded:  # a long read's reply comes serialized (engine/reads.py)
                reply = method.response.FromString(reply.data)
            return Response(200, JSON, jsonpb.encode(reply))

        return unary

    async def streaming(request: Request) -> Response:
        items = fn(request.body, HttpCall(request))
        try:
            first = await anext(items)
        except StopAsyncIteration:
            return Response(200, JSON, b"")
        except errors.MetastoreError as exc:
            # Nothing sent yet: a plain error answer, as grpc-gateway gives for a failed stream open.
            await items.aclose()
            return error_response(exc)
        except BaseException:
            await items.aclose()
            raise
        return Response(200, JSON, _results(first, items))

    return streaming


async def _results(first: Any, items: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async with aclosing(items):  # type: ignore[type-var]
        yield _result(first)
        try:
            async for item in items:
                yield _result(item)
        except errors.MetastoreError as exc:
            yield _stream_error(exc)


def gateway_routes(methods: Mapping[str, Method], layers: Sequence[Layer]) -> list[Route]:
    """POST routes for every path whose method is served (methods by their full name)."""
    handlers: dict[str, Handler] = {}
    routes = []
    for path, (service, name) in PATHS.items():
        method = methods.get(f"/{service}/{name}")
        if method is None:
            continue
        if method.info.full not in handlers:
            handlers[method.info.full] = handler(method, layers)
        for prefix in PREFIXES:
            routes.append(Route("POST", prefix + path, handlers[method.info.full]))
    return routes


def version_route(server: str, cluster: str) -> Route:
    """GET /version as etcd answers it."""
    body = jsonpb.dumps({"etcdserver": server, "etcdcluster": cluster})

    async def version(request: Request) -> Response:
        return Response(200, JSON, body)

    return Route("GET", "/version", version)
