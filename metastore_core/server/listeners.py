"""The listeners: which addresses the daemon serves on, and the gRPC transport options.

Client URLs carry gRPC; metrics URLs carry HTTP (/metrics, /health). https://
URLs serve TLS with the certificate set of server/tls.py; a Config built in
code that asks for https:// without one is refused at bind, never served as
plaintext.
"""

from __future__ import annotations

import socket

import grpc

from metastore_core.config import Config, is_https, split_url
from metastore_core.server.connections import reserve


def parse_url(url: str, flag: str) -> tuple[str, int]:
    """(host, port) of a listen URL; ValueError naming the flag (a Config built in code skips
    the CLI's checks, so the listener checks again)."""
    try:
        return split_url(url)
    except ValueError as exc:
        raise ValueError(f"{flag} {url}: {exc}") from None


ADMIN_CONNECTIONS = 64  # connections the health/admin listener takes


def grpc_address(url: str, flag: str = "--listen-client-urls") -> str:
    """'http://127.0.0.1:2379' -> '127.0.0.1:2379' (IPv6 hosts bracketed)."""
    host, port = parse_url(url, flag)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def grpc_options(config: Config, max_connections: int = 0) -> list[tuple[str, int]]:
    """Server options real etcd clients need (docs/architecture.md, 'Transport')."""
    if not max_connections:
        # past --max-connections calls are refused by the limits layer, health and admin use
        # the reserve (server/connections.py); past both grpc closes at accept
        max_connections = config.max_connections + reserve(config.max_connections)
    return [
        ("grpc.max_receive_message_length", config.max_recv_bytes),
        ("grpc.max_send_message_length", 2**31 - 1),
        # grpc-go clients ping every ~10 s on open streams; etcd allows pings every 5 s.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", int(config.connection_timeout_s * 1000)),
        # The default backlog cancels ~30 % of a burst of thousands of new streams.
        ("grpc.server.max_pending_requests", 20000),
        ("grpc.server.max_pending_requests_hard_limit", 30000),
        # Without this a second daemon on the same port would silently share it.
        ("grpc.so_reuseport", 0),
    ]


def check_free(host: str, port: int) -> None:
    """OSError naming the address if it cannot be bound. grpc's own failure also prints a line of
    C-core logging to stderr; this check first keeps a taken port to our one line."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return  # let grpc say what is wrong with the name
    for family, kind, proto, _, addr in addresses:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def bind_client_urls(
    server: grpc.aio.Server,
    urls: list[str],
    credentials: grpc.ServerCredentials | None = None,
    flag: str = "--listen-client-urls",
) -> list[int]:
    """Listen on every client URL; returns the bound ports (OSError naming a taken address)."""
    ports = []
    for url in urls:
        addr = grpc_address(url, flag)
        if is_https(url) and credentials is None:
            raise ValueError(f"{flag} {url}: https:// needs a certificate (--cert-file, --auto-tls)")
        check_free(*parse_url(url, flag))
        try:
            if is_https(url):
                port = server.add_secure_port(addr, credentials)
            else:
                port = server.add_insecure_port(addr)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {addr}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen on {addr}: address in use?")
        ports.append(port)
    return ports
