"""The metrics port over real sockets: its paths and answers, keep-alive, pipelining, streaming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metastore_core.server.http import HttpServer, Request, Response, Route, Router

from httpkit import Client, Daemon, metrics_port, request


@pytest.fixture
def daemon() -> Daemon:
    return Daemon()


@pytest.fixture
async def port(daemon: Daemon) -> AsyncIterator[int]:
    async with metrics_port(daemon) as endpoint:
        yield endpoint.ports[0]


async def test_health_follows_alarms_and_exclude(port: int, daemon: Daemon) -> None:
    client = await Client.open(port)
    healthy = await client.get("/health")
    assert healthy.status == 200 and healthy.headers["content-type"] == "application/json"
    assert json.loads(healthy.body) == {"health": "true", "reason": ""}

    daemon.alarms = {"NOSPACE"}
    alarmed = await client.get("/health")
    assert alarmed.status == 503
    assert json.loads(alarmed.body) == {"health": "false", "reason": "ALARM NOSPACE"}
    assert (await client.get("/health?exclude=NOSPACE")).status == 200
    assert (await client.get("/health?exclude=nospace,CORRUPT")).status == 200  # etcd upper-cases
    assert (await client.get("/health?exclude=CORRUPT")).status == 503
    assert (await client.get("/health/")).status == 503  # a trailing slash names the same path
    await client.close()


async def test_readyz_and_livez_as_etcd_answers_them(port: int, daemon: Daemon) -> None:
    client = await Client.open(port)
    ready = await client.get("/readyz")
    assert (ready.status, ready.text, ready.headers["content-type"]) == (200, "ok\n", "text/plain")
    verbose = await client.get("/readyz?verbose")
    assert verbose.text == "[+]data_corruption ok\n[+]shutdown ok\nok\n"
    daemon.failing["shutdown"] = "shutting down"
    failed = await client.get("/readyz")  # a failure lists every check, verbose or not
    assert (failed.status, failed.text) == (
        503,
        "[+]data_corruption ok\n[-]shutdown failed: shutting down\n\n",
    )
    assert (await client.get("/readyz?exclude=shutdown")).status == 200
    assert (await client.get("/readyz/data_corruption")).text == "ok\n"
    assert (await client.get("/readyz/shutdown")).status == 503
    assert (await client.get("/readyz/nope")).status == 404
    live = await client.get("/livez?verbose")
    assert (live.status, live.text) == (200, "[+]serializable_read ok\nok\n")
    await client.close()


async def test_unknown_path_is_404_and_post_is_405(port: int) -> None:
    client = await Client.open(port)
    missing = await client.get("/v2/keys")
    assert (missing.status, missing.text) == (404, "404 page not found\n")
    await client.send(request("POST", "/health", body=b"{}"))
    refused = await client.reply()
    assert (refused.status, refused.text) == (405, "Method Not Allowed\n")
    assert refused.headers["allow"] == "GET"
    await client.send(request("HEAD", "/livez"))
    assert (await client.reply(method="HEAD")).status == 405  # GET only, as before
    assert (await client.get("/livez")).status == 200  # none of these closed the connection
    await client.close()


async def test_metrics_is_prometheus_text(port: int) -> None:
    client = await Client.open(port)
    reply = await client.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(reply.text)}
    assert families["demo_requests"].samples[0].value == 3
    assert families["demo_seconds"].type == "histogram"
    await client.close()


async def test_two_requests_on_one_keep_alive_connection(port: int) -> None:
    client = await Client.open(port)
    first = await client.get("/livez")
    second = await client.get("/readyz")
    assert (first.status, second.status) == (200, 200)
    assert "connection" not in first.headers and "connection" not in second.headers
    await client.close()


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    client = await Client.open(port)
    targets = ["/livez", "/nope", "/health", "/readyz", "/metrics", "/livez"]
    await client.send(b"".join(request("GET", t) for t in targets))
    statuses = [(await client.reply()).status for _ in targets]
    assert statuses == [200, 404, 200, 200, 200, 200]
    await client.close()


async def test_connection_close_and_http_1_0_end_the_connection(port: int) -> None:
    client = await Client.open(port)
    await client.send(request("GET", "/livez", "Connection: close"))
    assert (await client.reply()).headers["connection"] == "close"
    assert await client.closed_by_server() == b""
    old = await Client.open(port)
    await old.send(b"GET /livez HTTP/1.0\r\n\r\n")
    assert (await old.reply()).text == "ok\n"
    assert await old.closed_by_server() == b""


class EchoPort:
    """A port with routes the metrics port lacks: a body echo, a handler bug, an endless stream."""

    def __init__(self) -> None:
        self.stream_closed = asyncio.Event()
        routes = [
            Route("POST", "/echo", self.echo),
            Route("GET", "/bug", self.bug),
            Route("GET", "/stream", self.stream),
        ]
        self.server = HttpServer(Router(routes))

    async def open(self) -> Client:
        return await Client.open(self.server.ports[0])

    async def echo(self, req: Request) -> Response:
        return Response(200, (("x-length", str(len(req.body))),), req.body)

    async def bug(self, req: Request) -> Response:
        raise RuntimeError("a bug, not the client's fault")

    async def stream(self, req: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            try:
                for n in range(3):
                    yield f"line {n}\n".encode()
                await asyncio.Event().wait()  # a quiet watch: nothing more to send, ever
            finally:
                self.stream_closed.set()

        return Response(200, (("content-type", "application/json"),), lines())


@pytest.fixture
async def echo() -> AsyncIterator[EchoPort]:
    port = EchoPort()
    await port.server.start("127.0.0.1", 0)
    yield port
    await port.server.close()


async def test_request_bodies_chunked_uploads_and_100_continue(echo: EchoPort) -> None:
    client = await echo.open()
    await client.send(request("POST", "/echo", body=b"hello"))
    assert (await client.reply()).body == b"hello"
    await client.send(
        request("POST", "/echo", "Transfer-Encoding: chunked") + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert (await client.reply()).body == b"abcde"
    await client.send(request("POST", "/echo", "Expect: 100-continue", "Content-Length: 2"))
    go_on = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    assert go_on.startswith(b"HTTP/1.1 100 ")
    await client.send(b"ok")
    assert (await client.reply()).body == b"ok"
    await client.close()


async def test_handler_bug_is_500_and_the_connection_lives_on(echo: EchoPort) -> None:
    client = await echo.open()
    bug = await client.get("/bug")
    assert (bug.status, bug.text) == (500, "internal error\n")
    await client.send(request("POST", "/echo", body=b"still here"))
    assert (await client.reply()).body == b"still here"
    await client.close()


async def test_streamed_response_is_chunked_and_closed_when_the_client_leaves(echo: EchoPort) -> None:
    client = await echo.open()
    await client.send(request("GET", "/stream"))
    received = b""
    while b"line 2\n" not in received:
        received += await asyncio.wait_for(client.reader.read(4096), 5)
    assert b"transfer-encoding: chunked" in received.lower()
    await client.close()
    await asyncio.wait_for(echo.stream_closed.wait(), 5)  # the generator was closed, not leaked


async def test_close_ends_open_streams(echo: EchoPort) -> None:
    client = await echo.open()
    await client.send(request("GET", "/stream"))
    await asyncio.wait_for(client.reader.readuntil(b"line 0\n"), 5)
    await echo.server.close()
    assert echo.stream_closed.is_set() and echo.server.open_connections == 0
    assert await client.closed_by_server() is not None
