"""Client connections: counted, admitted up to --max-connections, idle handshakes closed fast.

This watches gRPC's own client ports; the JSON gateway and the shared-port front listener
(server/http, server/front.py) cap their connections themselves.

grpc-core alone closes a connection past its cap at accept: the client sees UNAVAILABLE with
no reason, and a client that keeps idle sockets open (never sending the HTTP/2 preface) holds
every slot for the whole handshake timeout; 0 of 80 health checks were answered over 40 s
that way. So:
- grpc's cap is --max-connections plus a reserve (1 %, at least 32). Calls on a connection
  first seen while more than --max-connections are open are refused with RESOURCE_EXHAUSTED
  naming the flag; health and the admin service are exempt and use the reserve.
- Every second (4 a second under pressure) the established connections to the client ports
  are read from /proc/net/tcp{,6}; admitted connections that are gone are forgotten.
- Under pressure (the cap reached), a connection that has received fewer bytes than the
  HTTP/2 preface after IDLE_HANDSHAKE_S is shut down (TCP_INFO tells its bytes and age), so
  idle sockets hold a slot for a second, not for --connection-timeout. Shutting the socket
  down (not closing the descriptor, which is grpc's) makes grpc see the peer go and free it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from metastore_core import errors

log = logging.getLogger("metastore.connections")

PREFACE_BYTES = 24  # "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
IDLE_HANDSHAKE_S = 1.0
REFRESH_S = 1.0
PRESSURE_REFRESH_S = 0.25
MIN_RESERVE = 32
_ESTABLISHED = "01"
# struct tcp_info (linux/tcp.h): tcpi_last_data_recv (ms) and tcpi_bytes_received
_LAST_DATA_RECV = struct.Struct("=I")
_BYTES_RECEIVED = struct.Struct("=Q")
_LAST_DATA_RECV_AT, _BYTES_RECEIVED_AT, _TCP_INFO_LEN = 52, 128, 232


def reserve(max_connections: int) -> int:
    """Connections kept beyond --max-connections for health checks and admin calls."""
    return max(MIN_RESERVE, max_connections // 100)


@dataclass(frozen=True)
class Conn:
    """An established connection to a client port, as /proc shows it."""

    peer: str  # as grpc names it: "ipv4:127.0.0.1:53412", "ipv6:[::1]:53412"
    inode: int


def grpc_peer(host: str | bytes, port: int) -> str:
    """An address as grpc's peer string ("ipv4:127.0.0.1:53412", "ipv6:[::1]:53412"); an
    IPv4-mapped IPv6 address (a dual-stack listener's IPv4 client) is written as IPv4, as grpc does."""
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"ipv6:[{ip}]:{port}" if ip.version == 6 else f"ipv4:{ip}:{port}"


def _addr(hexaddr: str) -> str:
    """/proc/net/tcp's address (host byte order, 32-bit words) as grpc's peer string."""
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    # each 32-bit word is in host (little-endian) order
    ip = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return grpc_peer(ip, int(port_hex, 16))


def scan(ports: Sequence[int]) -> list[Conn]:
    """Established TCP connections to ports, from /proc/net/tcp and tcp6."""
    want = {f"{p:04X}" for p in ports}
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[3] == _ESTABLISHED and parts[1].rsplit(":", 1)[1] in want:
                        out.append(Conn(_addr(parts[2]), int(parts[9])))
        except OSError:
            continue
    return out


def _socket_fds() -> dict[int, int]:
    """inode -> descriptor of this process's sockets."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{name}")
            if link.startswith("socket:["):
                out[int(link[8:-1])] = int(name)
    return out


def close_idle_handshakes(conns: Sequence[Conn], idle_s: float) -> int:
    """Shut down the connections that got less than the HTTP/2 preface in idle_s or more."""
    fds = _socket_fds()
    closed = 0
    for c in conns:
        fd = fds.get(c.inode)
        if fd is None:
            continue
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # gone meanwhile
        try:
            info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            if len(info) < _BYTES_RECEIVED_AT + 8:
                continue
            (got,) = _BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)
            (idle_ms,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)
            if got < PREFACE_BYTES and idle_ms >= idle_s * 1000 and _peer_of(s) == c.peer:
                s.shutdown(socket.SHUT_RDWR)
                closed += 1
        except OSError:
            continue
        finally:
            s.close()  # our duplicate only: grpc's descriptor stays until grpc closes it
    return closed


def _peer_of(s: socket.socket) -> str:
    """s's peer in grpc's spelling (the descriptor may have been reused since /proc was read)."""
    host, port = s.getpeername()[:2]
    return grpc_peer(host, port)


class Connections:
    """Admission past --max-connections, the live count, and the idle-handshake reaper."""

    def __init__(
        self,
        max_connections: int,
        ports: Sequence[int],
        *,
        scan: Callable[[Sequence[int]], list[Conn]] = scan,
        reap: Callable[[Sequence[Conn], float], int] = close_idle_handshakes,
    ) -> None:
        self.max_connections = max_connections
        self.ports = ports
        self._scan = scan
        self._reap = reap
        self.current = 0  # established client connections at the last scan
        self.seen: set[str] = set()  # their peers
        self.admitted: set[str] = set()  # connections whose calls are served
        self.refused = 0  # calls refused: their connection came past the limit
        self.closed_idle = 0  # connections shut down for not starting the handshake

    @property
    def pressure(self) -> bool:
        return self.current >= self.max_connections

    def admit(self, peer: str) -> None:
        """Raise TooManyConnections for a connection first seen past the limit."""
        if peer in self.admitted:
            return
        # a connection the last scan missed is one more than it counted
        over = self.current - (peer in self.seen) >= self.max_connections
        if over:
            self.refused += 1
            raise errors.TooManyConnections(self.max_connections)
        self.admitted.add(peer)

    def _scan_and_reap(self) -> list[Conn]:
        """The blocking part (a thread): read /proc; under pressure, close idle handshakes."""
        conns = self._scan(self.ports)
        if len(conns) >= self.max_connections:
            closed = self._reap(conns, IDLE_HANDSHAKE_S)
            if closed:
                self.closed_idle += closed
                log.warning(
                    "%d client connections at the limit (--max-connections %d): closed %d that "
                    "had not started the HTTP/2 handshake within %.0fs",
                    len(conns),
                    self.max_connections,
                    closed,
                    IDLE_HANDSHAKE_S,
                )
        return conns

    async def refresh(self) -> None:
        conns = await asyncio.to_thread(self._scan_and_reap)
        self.current = len(conns)
        self.seen = {c.peer for c in conns}
        self.admitted.intersection_update(self.seen)  # on the loop: admit() adds to the same set

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(PRESSURE_REFRESH_S if self.pressure else REFRESH_S)
