"""A raw HTTP/1.1 client for the HTTP port tests: real sockets, bytes written as given, replies
parsed by h11's client side (so pipelined and chunked replies are read exactly)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import h11
from prometheus_client import CollectorRegistry, Counter, Histogram

from metastore_core.server.healthcheck import Probes
from metastore_core.server.http import HttpEndpoint, Limits


@dataclass
class Reply:
    """One response read whole."""

    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode()


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    """The bytes of one request; a Host header is added, Content-Length when there is a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Client:
    """One TCP connection to the port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._unparsed = b""

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(self, target: str) -> Reply:
        await self.send(request("GET", target))
        return await self.reply()

    async def reply(self, method: str = "GET", timeout: float = 5.0) -> Reply:
        """Read the next response to a request of `method` (which decides framing for HEAD)."""
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method, target="/", headers=[("host", "test")]))
        parser.send(h11.EndOfMessage())
        if self._unparsed:  # b"" would tell the parser the server closed
            parser.receive_data(self._unparsed)
        informational: list[int] = []
        status, headers, body = 0, {}, b""
        async with asyncio.timeout(timeout):
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA:
                    parser.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.InformationalResponse):
                    informational.append(event.status_code)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        self._unparsed = parser.trailing_data[0]
        return Reply(status, headers, body, informational)

    async def closed_by_server(self, within: float = 5.0) -> bytes | None:
        """Everything left to read once the server closes; None if it is still open after `within`."""
        rest = b""
        try:
            async with asyncio.timeout(within):
                while data := await self.reader.read(65536):
                    rest += data
        except TimeoutError:
            return None
        except ConnectionError:
            pass  # a reset is a close too
        return self._unparsed + rest

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@dataclass
class Daemon:
    """The health figures an endpoint reads, set by the test: active alarms and failing checks."""

    alarms: set[str] = field(default_factory=set)
    failing: dict[str, str] = field(default_factory=dict)  # check name -> why it fails

    def health(self, exclude: set[str]) -> tuple[bool, str]:
        active = sorted(self.alarms - exclude)
        return (False, "ALARM " + ",".join(active)) if active else (True, "")

    def check(self, name: str) -> tuple[str, Callable[[], Awaitable[str | None]]]:
        async def run() -> str | None:
            return self.failing.get(name)

        return name, run

    def probes(self) -> list[Probes]:
        return [
            Probes("livez", [self.check("serializable_read")]),
            Probes("readyz", [self.check("data_corruption"), self.check("shutdown")]),
        ]


@contextlib.asynccontextmanager
async def metrics_port(
    daemon: Daemon | None = None, limits: Limits | None = None
) -> AsyncIterator[HttpEndpoint]:
    """An in-process HttpEndpoint on a free 127.0.0.1 port, on the running loop, closed on exit."""
    registry = CollectorRegistry()
    Counter("demo_requests", "Requests seen.", ["code"], registry=registry).labels("200").inc(3)
    Histogram("demo_seconds", "Time taken.", registry=registry).observe(0.25)
    daemon = daemon or Daemon()
    endpoint = HttpEndpoint(registry, daemon.health, daemon.probes(), limits)
    await endpoint.start("127.0.0.1", 0)
    try:
        yield endpoint
    finally:
        await endpoint.close()
