"""What every served method is, declared once: its shape, its policy, and the call it gets.

Layers and servicers see a `Call`, not a transport context, so the same
servicer answers gRPC (rpc.py) and etcd's JSON gateway (http/gateway.py), each
method wrapped by the same layers (`wrap`). A method's
policy (wrapped by the layers or not, counted by the limits, needs
credentials, needs the root role) is declared in POLICIES, by service or by
method, and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from metastore_core.engine.auth import ANONYMOUS
from metastore_core.engine.entry import AuthInfo


@dataclass(frozen=True)
class Policy:
    """How the layers treat a method."""

    layers: bool = True  # recovery, limits, auth and metrics wrap it
    limits: bool = True  # counted against, and refused by, the resource limits
    auth: bool = True  # needs credentials once auth is on
    admin: bool = False  # needs the root role once auth is on
    local: bool = False  # while auth is off, loopback callers only


DEFAULT = Policy()
POLICIES: dict[str, Policy] = {
    # Probes must answer a saturated or locked-down daemon; Kubernetes probes send no credentials.
    "grpc.health.v1.Health": Policy(layers=False, limits=False, auth=False),
    # The operator's door: answers when the daemon is saturated; root only once auth is on, and
    # only callers on this host while it is off (anyone could stop the daemon otherwise).
    "metastore.admin.v1.Admin": Policy(limits=False, admin=True, local=True),
    # The way in needs no credentials; AuthStatus tells only the flag and the revision (etcd 3.5).
    "/etcdserverpb.Auth/Authenticate": Policy(auth=False),
    "/etcdserverpb.Auth/AuthStatus": Policy(auth=False),
    # etcd's authMaintenanceServer: these read or reshape the whole store.
    "/etcdserverpb.Maintenance/Defragment": Policy(admin=True),
    "/etcdserverpb.Maintenance/Snapshot": Policy(admin=True),
    "/etcdserverpb.Maintenance/Hash": Policy(admin=True),
    "/etcdserverpb.Maintenance/HashKV": Policy(admin=True),
    "/etcdserverpb.Maintenance/MoveLeader": Policy(admin=True),
}


def policy_for(service: str, method: str) -> Policy:
    """The declared policy of /service/method: the method's own, else its service's, else DEFAULT."""
    return POLICIES.get(f"/{service}/{method}") or POLICIES.get(service) or DEFAULT


@dataclass(frozen=True)
class MethodInfo:
    """What a layer may want to know about the method it wraps."""

    service: str  # e.g. "etcdserverpb.KV"
    name: str  # e.g. "Range"
    client_streaming: bool
    server_streaming: bool
    request_type: type[Message]
    policy: Policy = DEFAULT
    http: bool = False  # carried by the JSON gateway (counted apart), not by gRPC

    @property
    def full(self) -> str:
        """e.g. "/etcdserverpb.KV/Range"."""
        return f"/{self.service}/{self.name}"


def method_info(
    service: str, name: str, client_streaming: bool, server_streaming: bool, req: Any
) -> MethodInfo:
    return MethodInfo(service, name, client_streaming, server_streaming, req, policy_for(service, name))


class Call:
    """One call as layers and servicers see it, whatever carried it (gRPC, HTTP, a test)."""

    __slots__ = ("auth",)

    def __init__(self) -> None:
        # Who is calling, set by the auth layer: a client that named no one is ANONYMOUS (None
        # is the member itself, trusted, and never a client; see engine/auth.py).
        self.auth: AuthInfo | None = ANONYMOUS

    def peer(self) -> str:
        """Who is calling ("ipv4:127.0.0.1:53412"), as far as the transport knows."""
        return ""

    def metadata(self, key: str) -> str | None:
        """A request header / metadata value (e.g. "token"), or None."""
        return None

    def common_name(self) -> str:
        """The CN of the client certificate the transport verified, or ""."""
        return ""


# (request or request iterator, call) -> response, or an async iterator of responses
Behaviour = Callable[[Any, Call], Any]
Layer = Callable[[MethodInfo, Behaviour], Behaviour]


@dataclass(frozen=True)
class Method:
    """One method to serve: what it is, what implements it, its message classes."""

    info: MethodInfo
    fn: Behaviour
    request: type[Message]
    response: type[Message]


def wrap(info: MethodInfo, fn: Behaviour, layers: Sequence[Layer]) -> Behaviour:
    """fn inside the layers (innermost first), unless the method's policy takes none."""
    if info.policy.layers:
        for layer in layers:
            fn = layer(info, fn)
    return fn


def check_first(info: MethodInfo, fn: Behaviour, check: Callable[[Call], object]) -> Behaviour:
    """fn with check(call) run before it starts, for a method of any shape: a refusal check
    raises comes before any of fn's work (a stream's too)."""
    if not info.server_streaming:

        async def once(request: Any, call: Call) -> Any:
            check(call)
            return await fn(request, call)

        return once

    async def streaming(request: Any, call: Call) -> AsyncIterator[Any]:
        check(call)
        async with aclosing(fn(request, call)) as items:
            async for item in items:
                yield item

    return streaming


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
