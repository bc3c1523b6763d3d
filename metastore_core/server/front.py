"""One client port for gRPC and HTTP/1.1, as etcd's cmux: each connection's first bytes decide.

grpc.aio owns its sockets and cannot be handed one, so with --gateway-on-client-urls the client
address is this listener's: a connection that opens with the HTTP/2 preface is relayed, byte for
byte, to the gRPC server on a private loopback port; any other goes to the HTTP server (the JSON
gateway). The relay is two protocol callbacks and a write each way, with flow control (a slow
reader pauses its writer's side), but it is an extra copy of every gRPC byte: README, "JSON
gateway", has its price. gRPC then sees the relay as its peer, so the relay records which client
each of its loopback connections carries (`Relayed`), and the gRPC binding asks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import cast

from metastore_core.server.http import HttpServer
from metastore_core.server.http.connection import peer_name

log = logging.getLogger("metastore.front")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # every HTTP/2 client's first bytes (RFC 9113)
HIGH_WATER = 256 << 10  # bytes queued toward one side before the other side stops reading


class Relayed:
    """The relay's own loopback addresses (as gRPC names its peers) -> the clients they carry."""

    def __init__(self) -> None:
        self.clients: dict[str, str] = {}

    def peer(self, seen: str) -> str:
        """The real client behind a peer gRPC reports (itself when it was not relayed)."""
        return self.clients.get(seen, seen)


class _Side(asyncio.Protocol):
    """One socket of a relayed pair: what it reads goes to the other socket."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.pending = bytearray()  # read before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.pending += data
            if len(self.pending) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        # HTTP/2 has no use for a half-closed connection (gRPC keeps one open): end both sides,
        # after what is queued has been written.
        self.relay.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()

    # the other side's write buffer is full: stop reading what would be queued there
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class _Relay:
    """A client connection and its loopback connection to the gRPC server."""

    def __init__(self, front: FrontListener) -> None:
        self.front = front
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.client.other, self.upstream.other = self.upstream, self.client
        self.key = ""
        self.closed = False

    async def connect(self, first: bytes) -> None:
        assert self.client.transport is not None
        loop = asyncio.get_running_loop()
        try:
            port = self.front.grpc_port
            transport, _ = await loop.create_connection(lambda: self.upstream, "127.0.0.1", port)
        except OSError as exc:
            log.error("cannot reach the gRPC server on 127.0.0.1:%d: %s", self.front.grpc_port, exc)
            self.close()
            return
        if self.closed:
            transport.close()
            return
        self.key = peer_name(transport.get_extra_info("sockname"))
        self.front.relayed.clients[self.key] = peer_name(self.client.transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(HIGH_WATER)
        self.client.transport.set_write_buffer_limits(HIGH_WATER)
        transport.write(first + bytes(self.client.pending))
        self.client.pending.clear()
        self.client.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.front.relayed.clients.pop(self.key, None)
        self.front.relays.discard(self)
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()


class _Sniff(asyncio.Protocol):
    """A new connection until its first bytes say which server it is for."""

    def __init__(self, front: FrontListener) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.seen = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        if len(self.front.sniffing) + len(self.front.relays) >= self.front.max_connections:
            self.transport.close()  # a flood costs an accept and a close
            return
        self.front.sniffing.add(self)
        # a connection that never says anything must not be held forever
        self.timer = asyncio.get_running_loop().call_later(self.front.sniff_timeout, self.transport.close)

    def data_received(self, data: bytes) -> None:
        self.seen += data
        n = min(len(self.seen), len(PREFACE))
        if self.seen[:n] != PREFACE[:n]:
            self._hand_over(http=True)
        elif n == len(PREFACE):
            self._hand_over(http=False)

    def eof_received(self) -> bool:
        self._cancel_timer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        self.front.sniffing.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _hand_over(self, http: bool) -> None:
        self._cancel_timer()
        transport = self.transport
        assert transport is not None
        if http:
            self.front.to_http(transport, self.seen)
        else:
            self.front.to_grpc(transport, self.seen)


class FrontListener:
    """Listens on client addresses; sends gRPC connections to grpc_port, the rest to `http`."""

    def __init__(
        self, http: HttpServer, grpc_port: int, relayed: Relayed, sniff_timeout: float, max_connections: int
    ) -> None:
        """Connections still sniffing plus relayed ones are capped at max_connections (the HTTP
        server caps its own); one that says nothing within sniff_timeout is closed."""
        self.http = http
        self.grpc_port = grpc_port
        self.relayed = relayed
        self.sniff_timeout = sniff_timeout
        self.max_connections = max_connections
        self.servers: list[asyncio.Server] = []
        self.relays: set[_Relay] = set()
        self.sniffing: set[_Sniff] = set()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Sniff(self), host, port, reuse_address=True, backlog=1024)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def to_grpc(self, transport: asyncio.Transport, first: bytes) -> None:
        relay = _Relay(self)
        self.relays.add(relay)
        transport.set_protocol(relay.client)
        relay.client.connection_made(transport)
        transport.pause_reading()  # until the upstream connection is open
        asyncio.get_running_loop().create_task(relay.connect(first))

    def to_http(self, transport: asyncio.Transport, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.http.limits.read_size, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(first)
        self.http.accept(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def close(self) -> None:
        """Stop listening and cut every relayed connection (the HTTP server closes its own)."""
        self.stop_accepting()
        for relay in list(self.relays):
            relay.close()
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self.servers = []
