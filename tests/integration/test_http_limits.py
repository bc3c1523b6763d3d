"""The metrics port's limits over real sockets: what a scanner, a slow sender or a flood may cost."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from metastore_core.server.http import Limits

from httpkit import Client, metrics_port, request


async def test_oversized_header_is_refused_and_closed() -> None:
    async with metrics_port() as endpoint:
        client = await Client.open(endpoint.ports[0])
        await client.send(request("GET", "/livez", "X-Filler: " + "a" * (17 << 10)))
        reply = await client.reply()
        assert reply.status == 431 and reply.headers["connection"] == "close"
        assert await client.closed_by_server() == b""


async def test_header_never_finished_is_refused_at_the_cap() -> None:
    # A head that keeps growing without its blank line: refused once past the cap, not at EOF.
    async with metrics_port() as endpoint:
        client = await Client.open(endpoint.ports[0])
        await client.send(b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Filler: " + b"a" * (40 << 10))
        assert (await client.reply()).status == 431
        assert await client.closed_by_server() is not None


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /livez HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /livez HTTP/1.1\r\nHost t\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /livez HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # TLS to a plain port
    ],
)
async def test_malformed_request_is_400_and_closed(garbage: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="metastore.http")
    async with metrics_port() as endpoint:
        client = await Client.open(endpoint.ports[0])
        await client.send(garbage)
        reply = await client.reply()
        assert (reply.status, reply.text) == (400, "bad request\n")
        assert await client.closed_by_server() == b""
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_body_over_the_cap_is_413() -> None:
    async with metrics_port(limits=Limits(max_body_bytes=1000)) as endpoint:
        declared = await Client.open(endpoint.ports[0])
        await declared.send(request("POST", "/health", body=b"x" * 5000))
        assert (await declared.reply()).status == 413
        assert await declared.closed_by_server() == b""

        chunked = await Client.open(endpoint.ports[0])  # no length declared: counted as it arrives
        await chunked.send(
            request("POST", "/health", "Transfer-Encoding: chunked") + b"400\r\n" + b"x" * 1024
        )
        assert (await chunked.reply()).status == 413
        assert await chunked.closed_by_server() is not None


async def test_slow_sender_is_cut_off_while_others_are_served() -> None:
    async with metrics_port(limits=Limits(request_timeout=0.5)) as endpoint:
        slow = await Client.open(endpoint.ports[0])

        async def trickle() -> None:
            # A head that never ends, a byte at a time: each byte is on time, the whole never is.
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /livez HTTP/1.1\r\nHost: t\r\nX-Filler: " + b"a" * 10_000:
                    await slow.send(bytes([byte]))
                    await asyncio.sleep(0.01)

        trickling = asyncio.create_task(trickle())
        try:
            other = await Client.open(endpoint.ports[0])
            assert (await other.get("/livez")).status == 200
            assert not trickling.done()
            assert await slow.closed_by_server(within=5) == b""  # closed without an answer
        finally:
            trickling.cancel()


async def test_idle_keep_alive_connection_is_closed() -> None:
    async with metrics_port(limits=Limits(idle_timeout=0.2)) as endpoint:
        client = await Client.open(endpoint.ports[0])
        assert (await client.get("/livez")).status == 200
        assert await client.closed_by_server(within=5) == b""


async def test_flood_beyond_the_cap_then_a_fresh_client_is_served() -> None:
    async with metrics_port(limits=Limits(max_connections=8)) as endpoint:
        port = endpoint.ports[0]
        flood = [await Client.open(port) for _ in range(20)]
        left_open = await asyncio.gather(*(c.closed_by_server(within=2) for c in flood))
        assert left_open.count(None) == 8  # the other 12 were closed at once, unread
        late = await Client.open(port)
        assert await late.closed_by_server(within=2) == b""  # still full

        for client in flood:
            await client.close()
        async with asyncio.timeout(5):
            while endpoint.open_connections:
                await asyncio.sleep(0.01)
        fresh = await Client.open(port)
        assert (await fresh.get("/livez")).status == 200
        await fresh.close()
