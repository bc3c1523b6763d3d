"""An in-process daemon with the JSON gateway, and a raw HTTP client that reads streams line by line."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import h11

from metastore_core.config import Config
from metastore_core.server.app import Server

from conftest import free_port
from httpkit import Client, Reply, request


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def gateway_config(**extra: Any) -> Config:
    """Memory backend, every port free on 127.0.0.1; extra overrides any of it."""
    settings: dict[str, Any] = {
        "backend": "memory",
        "listen_client_urls": [f"http://127.0.0.1:{free_port()}"],
        "listen_client_http_urls": [f"http://127.0.0.1:{free_port()}"],
        "listen_metrics_urls": [f"http://127.0.0.1:{free_port()}"],
    }
    return Config(**{**settings, **extra})


@contextlib.asynccontextmanager
async def gateway_server(**extra: Any) -> AsyncIterator[Server]:
    """A memory-backed daemon serving the gateway on --listen-client-http-urls, stopped on exit."""
    server = Server(gateway_config(**extra))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def http_port(server: Server) -> int:
    assert server.gateway is not None
    return server.gateway.ports[0]


def post_bytes(path: str, doc: Any = None, *headers: str) -> bytes:
    body = b"" if doc is None else (doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return request("POST", path, *headers, body=body)


async def post(port: int, path: str, doc: Any = None, *headers: str) -> Reply:
    """One request on a new connection; the reply read whole."""
    client = await Client.open(port)
    try:
        await client.send(post_bytes(path, doc, *headers))
        return await client.reply()
    finally:
        await client.close()


def parsed(reply: Reply) -> Any:
    assert reply.headers.get("content-type") == "application/json", reply
    return json.loads(reply.body)


class Stream:
    """A streamed response read one newline-delimited JSON object at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = h11.Connection(h11.CLIENT)
        self.parser.send(
            h11.Request(method="POST", target="/", headers=[("host", "t"), ("content-length", "0")])
        )
        self.parser.send(h11.EndOfMessage())
        self.status = 0
        self.buffer = b""
        self.ended = False

    @classmethod
    async def open(cls, port: int, path: str, body: bytes, *headers: str) -> Stream:
        client = await Client.open(port)
        await client.send(request("POST", path, *headers, body=body))
        stream = cls(client)
        await stream._head()
        return stream

    async def _event(self, timeout: float) -> h11.Event:
        async with asyncio.timeout(timeout):
            while (event := self.parser.next_event()) is h11.NEED_DATA:
                self.parser.receive_data(await self.client.reader.read(65536))
        return event

    async def _head(self) -> None:
        event = await self._event(5.0)
        assert isinstance(event, h11.Response), event
        self.status = event.status_code

    async def next(self, timeout: float = 5.0) -> Any:
        """The next object, or None once the response has ended."""
        while b"\n" not in self.buffer and not self.ended:
            event = await self._event(timeout)
            if isinstance(event, h11.Data):
                self.buffer += event.data
            else:
                self.ended = True
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    async def rest(self, timeout: float = 5.0) -> list[Any]:
        out = []
        while (item := await self.next(timeout)) is not None:
            out.append(item)
        return out

    async def close(self) -> None:
        await self.client.close()
