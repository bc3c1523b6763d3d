"""Per-client limits and connection admission, without a transport (a fake clock, a fake /proc)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from metastore_core import errors
from metastore_core.engine.auth import ANONYMOUS
from metastore_core.engine.entry import AuthInfo
from metastore_core.server.connections import Conn, Connections, _addr, reserve, scan
from metastore_core.server.layers.clients import ClientLimits, client_key
from metastore_core.server.methods import Call, method_info


class PeerCall(Call):
    __slots__ = ("_peer",)

    def __init__(self, peer: str) -> None:
        self.auth = ANONYMOUS  # what the auth layer sets for a call that named no user
        self._peer = peer

    def peer(self) -> str:
        return self._peer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


PUT = method_info("etcdserverpb.KV", "Put", False, False, object)
WATCH = method_info("etcdserverpb.Watch", "Watch", True, True, object)
HEALTH_FREE = method_info("metastore.admin.v1.Admin", "GetStats", False, False, object)


def test_a_client_is_its_host_or_its_user() -> None:
    assert client_key(PeerCall("ipv4:10.0.0.7:53412")) == "ipv4:10.0.0.7"
    assert client_key(PeerCall("ipv6:[::1]:40000")) == "ipv6:[::1]"
    assert client_key(PeerCall("unix:/run/m.sock")) == "unix:/run/m.sock"
    call = PeerCall("ipv4:10.0.0.7:53412")
    call.auth = AuthInfo("alice", 3)  # an authenticated call
    assert client_key(call) == "user:alice"


async def test_one_client_at_its_cap_is_refused_while_another_goes_on() -> None:
    limits = ClientLimits(max_in_flight=2, rate=0)
    release = asyncio.Event()

    async def handler(request: Any, call: Call) -> str:
        await release.wait()
        return "ok"

    put = limits.layer()(PUT, handler)
    greedy = [asyncio.ensure_future(put(None, PeerCall(f"ipv4:10.0.0.1:{p}"))) for p in (1, 2)]
    await asyncio.sleep(0)
    with pytest.raises(errors.ClientTooManyRequests) as exc:
        await put(None, PeerCall("ipv4:10.0.0.1:3"))  # a third connection of the same host
    assert "--max-client-requests" in exc.value.text and "limit of 2" in exc.value.text
    other = asyncio.ensure_future(put(None, PeerCall("ipv4:10.0.0.2:1")))
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*greedy, other) == ["ok"] * 3
    assert limits.refused_in_flight == 1
    busiest = dict(limits.busiest())
    assert busiest["ipv4:10.0.0.1"].refused_in_flight == 1 and busiest["ipv4:10.0.0.1"].requests == 2
    assert limits.sweep() == 0  # idle again: forgotten


async def test_token_bucket_per_client() -> None:
    clock = Clock()
    limits = ClientLimits(max_in_flight=0, rate=10, burst=3, clock=clock)

    async def handler(request: Any, call: Call) -> str:
        return "ok"

    put = limits.layer()(PUT, handler)
    a, b = PeerCall("ipv4:10.0.0.1:1"), PeerCall("ipv4:10.0.0.2:1")
    for _ in range(3):
        await put(None, a)
    with pytest.raises(errors.ClientRateLimited) as exc:
        await put(None, a)
    assert "10 requests per second" in exc.value.text and "--client-rate" in exc.value.text
    await put(None, b)  # another client has its own bucket
    clock.now += 0.15  # one token back (and a half)
    await put(None, a)
    with pytest.raises(errors.ClientRateLimited):
        await put(None, a)
    assert limits.refused_rate == 2
    clock.now += 1
    assert limits.sweep() == 0


async def test_stream_opens_take_tokens_and_operator_methods_are_exempt() -> None:
    limits = ClientLimits(max_in_flight=1, rate=1, burst=1, clock=Clock())

    async def stream(request: Any, call: Call) -> Any:
        yield "event"

    async def handler(request: Any, call: Call) -> str:
        return "stats"

    watch = limits.layer()(WATCH, stream)
    call = PeerCall("ipv4:10.0.0.1:1")
    assert [x async for x in watch(None, call)] == ["event"]
    with pytest.raises(errors.ClientRateLimited):
        [x async for x in watch(None, call)]
    assert limits.layer()(HEALTH_FREE, handler) is handler
    assert ClientLimits(0, 0).layer()(PUT, handler) is handler  # both off: no layer at all


def _conns(n: int, port: int = 2379) -> list[Conn]:
    return [Conn(f"ipv4:127.0.0.1:{40000 + i}", i) for i in range(n)]


async def test_connections_past_the_limit_are_refused_and_forgotten_when_gone() -> None:
    live = _conns(3)
    conns = Connections(3, [2379], scan=lambda ports: list(live), reap=lambda c, idle: 0)
    await conns.refresh()
    for c in live:
        conns.admit(c.peer)  # these came while there was room
    live.append(Conn("ipv4:127.0.0.1:50000", 99))
    await conns.refresh()
    conns.admit("ipv4:127.0.0.1:40000")  # admitted before: still served
    with pytest.raises(errors.TooManyConnections) as exc:
        conns.admit("ipv4:127.0.0.1:50000")
    assert "limit of 3" in exc.value.text and "--max-connections" in exc.value.text
    assert conns.refused == 1 and conns.pressure
    del live[0]
    await conns.refresh()
    assert "ipv4:127.0.0.1:40000" not in conns.admitted  # gone from /proc: forgotten
    conns.admit("ipv4:127.0.0.1:50000")  # room again
    assert reserve(10_000) == 100 and reserve(50) == 32


async def test_idle_handshakes_are_reaped_only_under_pressure() -> None:
    reaped: list[int] = []

    def reap(c: Sequence[Conn], idle: float) -> int:
        reaped.append(len(c))
        return 1

    live = _conns(2)
    conns = Connections(3, [2379], scan=lambda ports: list(live), reap=reap)
    await conns.refresh()
    assert reaped == []
    live.extend([*_conns(3)[2:], Conn("ipv4:127.0.0.1:1", 7)])
    await conns.refresh()
    assert reaped == [4] and conns.closed_idle == 1


def test_proc_addresses_and_a_real_scan() -> None:
    assert _addr("0100007F:9C40") == "ipv4:127.0.0.1:40000"
    assert _addr("00000000000000000000000001000000:0050") == "ipv6:[::1]:80"
    assert _addr("0000000000000000FFFF00000100007F:9C40") == "ipv4:127.0.0.1:40000"  # dual-stack
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as c, srv:
        accepted, _ = srv.accept()
        with accepted:
            found = scan([port])
            assert [x.peer for x in found] == [f"ipv4:127.0.0.1:{c.getsockname()[1]}"]
