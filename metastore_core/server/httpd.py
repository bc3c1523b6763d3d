"""The HTTP port (--listen-metrics-urls): /metrics, /health, /readyz.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET only, one
request per connection, no keep-alive. /health answers like etcd's: 200
{"health":"true"} or 503 {"health":"false","reason":...} while an alarm is
active (`?exclude=NOSPACE` ignores that one) or the daemon is not serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("metastore.http")

MAX_HEADER_BYTES = 16 << 10
HealthFn = Callable[[set[str]], tuple[bool, str]]  # (excluded alarm names) -> (healthy, reason)
ReadyFn = Callable[[], tuple[bool, str]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class HttpEndpoint:
    """Serves the metrics registry and the health figures on one or more addresses."""

    def __init__(self, registry: CollectorRegistry, health: HealthFn, ready: ReadyFn) -> None:
        self.registry = registry
        self.health = health
        self.ready = ready
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []

    async def start(self, host: str, port: int) -> int:
        server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        self.servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        self.ports.append(bound)
        return bound

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.wait_closed(), 1.0)
        self.servers = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            status, ctype, body = await self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("HTTP handler failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        url = urlsplit(target)
        path = url.path.rstrip("/") or "/"
        if path not in ("/metrics", "/health", "/readyz", "/livez"):
            return 404, "text/plain", b"404 page not found\n"
        if method != "GET":
            return 405, "text/plain", b"Method Not Allowed\n"
        if path == "/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            return 200, CONTENT_TYPE_LATEST, body
        if path == "/health":
            exclude = {a.upper() for v in parse_qs(url.query).get("exclude", []) for a in v.split(",")}
            ok, reason = self.health(exclude)
            doc = {"health": "true" if ok else "false", "reason": reason}
            return (200 if ok else 503), "application/json", json.dumps(doc).encode()
        if path == "/livez":
            return 200, "text/plain", b"ok\n"
        ok, reason = self.ready()
        return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", f"{reason}\n".encode())
