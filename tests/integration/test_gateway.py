"""etcd's JSON gateway in-process: every route, errors, auth, streams and disconnects, metrics."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import ssl
import time
from pathlib import Path

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.server.http.gateway import PATHS
from metastore_core.server.layers.limits import count_connections
from tests.tlskit import CA, Pair

from conftest import free_port
from gatewaykit import Stream, b64, gateway_config, gateway_server, http_port, parsed, post, post_bytes
from httpkit import Client, request

STREAMS = {"/watch", "/lease/keepalive", "/maintenance/snapshot", "/election/observe"}


async def test_every_unary_route_reaches_its_servicer_under_v3_and_v3beta() -> None:
    async with gateway_server() as server:
        port = http_port(server)
        for path in sorted(set(PATHS) - STREAMS):
            for prefix in ("/v3", "/v3beta"):
                reply = await post(port, prefix + path, {})
                # An empty request: answered by the servicer (a reply, or its refusal in etcd's
                # JSON body), never the router's plain-text 404/405.
                doc = parsed(reply)
                if reply.status != 200:
                    assert doc["error"] == doc["message"] and isinstance(doc["code"], int), (path, doc)
        assert (await post(port, "/v3alpha/kv/range", {})).status == 404  # gone in etcd 3.4 too
        assert (await post(port, "/v3/kv/nothing", {})).status == 404
        client = await Client.open(port)
        assert (await client.get("/v3/kv/range")).status == 405


async def test_kv_and_errors_as_etcds_gateway_answers_them() -> None:
    async with gateway_server() as server:
        port = http_port(server)
        put = parsed(await post(port, "/v3/kv/put", {"key": b64("foo"), "value": b64("bar")}))
        assert put["header"]["revision"] == "2" and set(put["header"]) == {
            "cluster_id",
            "member_id",
            "revision",
            "raft_term",
        }
        got = parsed(await post(port, "/v3/kv/range", {"key": b64("foo")}))
        assert got["kvs"] == [
            {
                "key": b64("foo"),
                "create_revision": "2",
                "mod_revision": "2",
                "version": "1",
                "value": b64("bar"),
            }
        ]
        assert got["count"] == "1"
        txn = {
            "compare": [{"key": b64("foo"), "target": "VALUE", "value": b64("bar")}],
            "success": [{"requestPut": {"key": b64("foo"), "value": b64("baz")}}],
        }
        assert parsed(await post(port, "/v3/kv/txn", txn))["succeeded"] is True

        async def refused(path: str, doc: object) -> tuple[int, int, str]:
            reply = await post(port, path, doc)
            body = parsed(reply)
            assert body["error"] == body["message"]
            return reply.status, body["code"], body["message"]

        assert await refused("/v3/kv/range", {"key": ""}) == (400, 3, "etcdserver: key is not provided")
        await post(port, "/v3/kv/compaction", {"revision": 3})
        compacted = "etcdserver: mvcc: required revision has been compacted"
        assert await refused("/v3/kv/range", {"key": b64("foo"), "revision": 2}) == (400, 11, compacted)
        assert await refused("/v3/kv/lease/revoke", {"ID": 77}) == (
            404,
            5,
            "etcdserver: requested lease not found",
        )
        assert await refused("/v3/auth/authenticate", {"name": "a", "password": "b"}) == (
            412,
            9,
            "etcdserver: authentication is not enabled",
        )
        assert (await refused("/v3/cluster/member/add", {}))[:2] == (501, 12)


async def test_version_and_health_on_the_gateway_port() -> None:
    async with gateway_server() as server:
        client = await Client.open(http_port(server))
        version = await client.get("/version")
        assert (version.status, json.loads(version.body)) == (
            200,
            {"etcdserver": "3.5.0", "etcdcluster": "3.5.0"},
        )
        health = await client.get("/health")
        assert (health.status, json.loads(health.body)["health"]) == (200, "true")
        assert server.node is not None
        await post(http_port(server), "/v3/maintenance/alarm", {"action": "ACTIVATE", "alarm": "NOSPACE"})
        assert (await client.get("/health")).status == 503
        assert (await client.get("/health?exclude=NOSPACE")).status == 200
        refused = await post(http_port(server), "/version")
        assert refused.status == 405


async def test_auth_token_travels_in_the_authorization_header() -> None:
    async with gateway_server(bcrypt_cost=4) as server:
        port = http_port(server)
        for path, doc in [
            ("/v3/auth/user/add", {"name": "root", "password": "rootpw"}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": "alice", "password": "alicepw"}),
            ("/v3/auth/role/add", {"name": "app"}),
            (
                "/v3/auth/role/grant",
                {
                    "name": "app",
                    "perm": {"permType": "READWRITE", "key": b64("app/"), "range_end": b64("app0")},
                },
            ),
            ("/v3/auth/user/grant", {"user": "alice", "role": "app"}),
            ("/v3/auth/enable", {}),
        ]:
            assert (await post(port, path, doc)).status == 200, path
        anonymous = await post(port, "/v3/kv/put", {"key": b64("app/x"), "value": b64("1")})
        assert (anonymous.status, parsed(anonymous)["message"]) == (400, "etcdserver: user name is empty")
        forged = await post(port, "/v3/kv/range", {"key": b64("app/x")}, "Authorization: garbage")
        assert (forged.status, parsed(forged)["code"]) == (401, 16)
        token = parsed(await post(port, "/v3/auth/authenticate", {"name": "alice", "password": "alicepw"}))[
            "token"
        ]
        auth = f"Authorization: {token}"
        assert (await post(port, "/v3/kv/put", {"key": b64("app/x"), "value": b64("1")}, auth)).status == 200
        denied = await post(port, "/v3/kv/put", {"key": b64("other"), "value": b64("1")}, auth)
        assert (denied.status, parsed(denied)["message"]) == (403, "etcdserver: permission denied")
        assert (await post(port, "/v3/maintenance/defragment", {}, auth)).status == 403  # root only
        # grpc-gateway's own spelling of metadata works too
        assert (
            await post(port, "/v3/kv/range", {"key": b64("app/x")}, f"Grpc-Metadata-Token: {token}")
        ).status == 200


async def test_watch_streams_events_and_a_disconnect_frees_its_watchers_at_once() -> None:
    async with gateway_server() as server:
        assert server.node is not None
        figures = server.node.figures
        port = http_port(server)
        body = b"".join(json.dumps({"create_request": {"key": b64(k)}}).encode() for k in ("a", "b", "c"))
        watch = await Stream.open(port, "/v3/watch", body)
        assert watch.status == 200
        created = [await watch.next() for _ in range(3)]
        assert [c["result"].get("watch_id", "0") for c in created] == ["0", "1", "2"]
        assert all(c["result"]["created"] for c in created)
        assert figures.watchers == 3
        await post(port, "/v3/kv/put", {"key": b64("b"), "value": b64("1")})
        event = (await watch.next())["result"]
        assert event["watch_id"] == "1" and event["events"][0]["kv"]["value"] == b64("1")
        await watch.close()
        deadline = time.monotonic() + 5
        while figures.watchers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert figures.watchers == 0 and figures.watch_streams == 0


async def test_keepalive_answers_each_request_of_the_body_then_ends() -> None:
    async with gateway_server() as server:
        port = http_port(server)
        lease = parsed(await post(port, "/v3/lease/grant", {"TTL": 30}))["ID"]
        body = f'{{"ID":"{lease}"}}{{"ID":{lease}}}\n{{"ID":"1"}}'.encode()
        stream = await Stream.open(port, "/v3/lease/keepalive", body)
        results = [r["result"] for r in await stream.rest()]
        assert [(r["ID"], r.get("TTL")) for r in results] == [(lease, "30"), (lease, "30"), ("1", None)]
        await stream.close()
        snapshot = await Stream.open(port, "/v3/maintenance/snapshot", b"{}")
        blobs = [r["result"] for r in await snapshot.rest()]
        assert blobs[-1].get("remaining_bytes") is None and len(blobs) >= 2
        await snapshot.close()


async def test_a_client_gone_mid_stream_frees_its_connection_and_the_stream() -> None:
    async with gateway_server() as server:
        assert server.gateway is not None and server.node is not None
        port = http_port(server)
        lease = parsed(await post(port, "/v3/lease/grant", {"TTL": 30}))["ID"]
        many = b"".join(b'{"ID":"%s"}' % lease.encode() for _ in range(20_000))
        keepalive = await Stream.open(port, "/v3/lease/keepalive", many)
        assert (await keepalive.next())["result"]["ID"] == lease
        watch = await Stream.open(port, "/v3/watch", b'{"create_request":{"key":"YQ=="}}')
        assert (await watch.next())["result"]["created"]
        await keepalive.close()
        await watch.close()
        deadline = time.monotonic() + 5
        while server.gateway.open_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.gateway.open_connections == 0
        assert server.limiter.streams == 0 and server.node.figures.watchers == 0


async def test_a_stream_that_fails_after_its_first_reply_ends_with_grpc_gateways_error_object() -> None:
    server = Server(gateway_config())
    await server.start()
    try:
        watch = await Stream.open(http_port(server), "/v3/watch", b'{"create_request":{"key":"YQ=="}}')
        assert (await watch.next())["result"]["created"]
        stopping = asyncio.ensure_future(server.stop())
        error = (await watch.next())["error"]
        assert error == {
            "grpc_code": 14,
            "http_code": 503,
            "message": "etcdserver: server stopped",
            "http_status": "Service Unavailable",
        }
        assert await watch.next() is None
        await stopping
    finally:
        if not server.stopped.is_set():
            await server.stop()


async def test_a_stream_refused_before_its_first_reply_is_a_plain_error_answer() -> None:
    async with gateway_server() as server:
        watch = await Stream.open(
            http_port(server), "/v3/watch", b'{"create_request":{"key":"YQ=="}}', "Authorization: garbage"
        )
        assert watch.status == 401
        assert await watch.rest() == [
            {
                "error": "etcdserver: invalid auth token",
                "message": "etcdserver: invalid auth token",
                "code": 16,
            }
        ]


async def test_a_lock_waiter_that_goes_away_leaves_no_key() -> None:
    async with gateway_server() as server:
        port = http_port(server)
        held = parsed(await post(port, "/v3/lock/lock", {"name": b64("m")}))
        assert base64.b64decode(held["key"]).startswith(b"m/")
        waiter = await Client.open(port)
        await waiter.send(request("POST", "/v3/lock/lock", body=json.dumps({"name": b64("m")}).encode()))

        async def keys() -> int:
            doc = parsed(await post(port, "/v3/kv/range", {"key": b64("m/"), "range_end": b64("m0")}))
            return int(doc.get("count", "0"))

        deadline = time.monotonic() + 5
        while await keys() < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await keys() == 2  # the waiter's key is in line behind the holder's
        await waiter.close()
        while await keys() > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await keys() == 1


async def test_gateway_calls_are_counted_apart_from_grpc_in_the_same_families() -> None:
    async with gateway_server() as server:
        await post(http_port(server), "/v3/kv/range", {"key": ""})
        await post(http_port(server), "/v3/kv/range", b"{nope")
        samples = {
            (s.labels["grpc_type"], s.labels.get("grpc_code")): s.value
            for family in server.metrics.collect()
            if family.name == "grpc_server_handled"
            for s in family.samples
            if s.labels.get("grpc_method") == "Range"
        }
        assert samples[("http_unary", "InvalidArgument")] == 2  # the malformed body is counted too
        assert samples[("unary", "InvalidArgument")] == 0
        types = {
            s.labels["grpc_method"]: s.labels["grpc_type"]
            for family in server.metrics.collect()
            if family.name == "grpc_server_started"
            for s in family.samples
            if s.labels["grpc_type"].startswith("http_")
        }
        assert types["Watch"] == "http_bidi_stream" and types["Snapshot"] == "http_server_stream"
        assert "HashKV" not in types  # its path is Hash's, and Hash wins (as in etcd)
        held = await Client.open(http_port(server))
        assert (await held.get("/version")).status == 200
        # metastore_connections_current counts the gateway's clients too
        assert http_port(server) in server.ports and count_connections([http_port(server)]) >= 1
        await held.close()


@pytest.mark.parametrize("one_port", [True])
async def test_one_port_serves_grpc_and_the_gateway_and_knows_the_real_peer(one_port: bool) -> None:
    async with gateway_server(gateway_on_client_urls=one_port) as server:
        port = server.ports[0]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            await kv.Put(pb.PutRequest(key=b"k", value=b"grpc"))
            got = parsed(await post(port, "/v3/kv/range", {"key": b64("k")}))
            assert got["kvs"][0]["value"] == b64("grpc")
            version = await (await Client.open(port)).get("/version")
            assert version.status == 200
            # gRPC sees the relay's loopback socket; the relay knows the client behind it
            assert server.front is not None and len(server.relayed.clients) == 1
            ((relay_side, client),) = server.relayed.clients.items()
            assert server.relayed.peer(relay_side) == client != relay_side
            assert client.startswith("ipv4:127.0.0.1:")
        deadline = time.monotonic() + 5
        while server.relayed.clients and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert server.relayed.clients == {}


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"key":', "Expecting value"),
        (b'{"key":5}', "key"),
        (b'{"key":"YQ==","limit":"many"}', "limit"),
        (b'{"key":"YQ==","bogus":true}', 'no field named "bogus"'),
        (b"[" * 50_000, "recursion"),
    ],
)
async def test_bad_json_is_400_with_etcds_error_body(body: bytes, why: str) -> None:
    async with gateway_server() as server:
        # unary, and a stream refused before it starts
        for path, sent in (("/v3/kv/range", body), ("/v3/watch", b'{"create_request":' + body + b"}")):
            reply = await post(http_port(server), path, sent)
            doc = parsed(reply)
            assert (reply.status, doc["code"]) == (400, 3)
            assert doc["error"] == doc["message"] and why.lower() in doc["message"].lower()
        assert server.node is not None and server.node.figures.watchers == 0


async def test_a_body_over_the_cap_is_refused_with_etcds_error_body_and_others_go_on() -> None:
    async with gateway_server(
        max_recv_bytes=64 << 10, max_request_bytes=32 << 10
    ) as server:  # 128 KiB body cap
        port = http_port(server)
        declared = await Client.open(port)
        await declared.send(request("POST", "/v3/kv/put", body=b"x" * (200 << 10)))
        reply = await declared.reply()
        assert (reply.status, parsed(reply)["code"]) == (413, 8)
        assert reply.headers["connection"] == "close"
        chunked = await Client.open(port)  # no length declared: counted as it arrives
        await chunked.send(
            request("POST", "/v3/kv/put", "Transfer-Encoding: chunked") + b"30000\r\n" + b"x" * 0x30000
        )
        assert (await chunked.reply()).status == 413
        # under the cap but over --max-request-bytes: the servicer's own refusal, in etcd's words
        big = await post(port, "/v3/kv/put", {"key": b64("k"), "value": b64("v" * (40 << 10))})
        assert (big.status, parsed(big)["message"]) == (400, "etcdserver: request is too large")
        assert (
            await post(port, "/v3/kv/put", {"key": b64("k"), "value": b64("v" * (10 << 10))})
        ).status == 200


async def test_many_large_bodies_at_once_hit_the_ports_budget_and_small_requests_go_on() -> None:
    # a 128 KiB body cap and room for 8 full bodies (1 MiB) held at once by the port
    async with gateway_server(max_recv_bytes=64 << 10) as server:
        port = http_port(server)
        body = json.dumps({"key": b64("k"), "value": b64("v" * (90 << 10))}).encode()  # ~120 KiB
        head = request("POST", "/v3/kv/put", body=body)
        holders = [await Client.open(port) for _ in range(9)]
        for c in holders[:8]:
            await c.send(head[:-1])  # all but the last byte: the body is held, unfinished
        await asyncio.sleep(0.2)
        await holders[8].send(head[:-1])
        refused = await holders[8].reply()
        assert (refused.status, parsed(refused)["code"]) == (503, 14)
        # small requests still fit, and the held ones complete
        assert (await post(port, "/v3/kv/range", {"key": b64("k")})).status == 200
        for c in holders[:8]:
            await c.send(head[-1:])
            assert (await c.reply()).status == 200
        assert server.gateway is not None and server.gateway.budget.held == 0


async def test_a_trickling_sender_is_cut_off_while_others_are_served() -> None:
    async with gateway_server(connection_timeout_s=0.5) as server:
        port = http_port(server)
        slow = await Client.open(port)
        head = request("POST", "/v3/kv/put", body=b'{"key":"YQ==","value":"' + b"A" * 4000 + b'"}')

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in head:
                    await slow.send(bytes([byte]))
                    await asyncio.sleep(0.005)

        trickling = asyncio.create_task(trickle())
        try:
            for _ in range(3):
                assert (await post(port, "/v3/kv/range", {"key": b64("a")})).status == 200
            assert await slow.closed_by_server(within=5) is not None
        finally:
            trickling.cancel()
        assert parsed(await post(port, "/v3/kv/range", {"key": b64("a")})).get("count") is None  # no put


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    async with gateway_server() as server:
        client = await Client.open(http_port(server))
        await client.send(
            b"".join(
                request(
                    "POST", "/v3/kv/put", body=json.dumps({"key": b64("p"), "value": b64(str(i))}).encode()
                )
                for i in range(5)
            )
            + request("POST", "/v3/kv/range", body=json.dumps({"key": b64("p")}).encode())
        )
        revisions = [json.loads((await client.reply()).body)["header"]["revision"] for _ in range(5)]
        assert revisions == ["2", "3", "4", "5", "6"]
        last = json.loads((await client.reply()).body)
        assert last["kvs"][0]["value"] == b64("4")


async def test_a_connection_flood_is_capped_and_the_served_ones_go_on() -> None:
    async with gateway_server(max_connections=8) as server:
        port = http_port(server)
        flood = [await Client.open(port) for _ in range(20)]
        left_open = await asyncio.gather(*(c.closed_by_server(within=1) for c in flood))
        assert left_open.count(None) == 8  # the rest closed at accept, unread
        kept = [c for c, rest in zip(flood, left_open, strict=True) if rest is None]
        for c in kept:
            await c.send(post_bytes("/v3/kv/range", {"key": b64("a")}))
            assert (await c.reply()).status == 200
        for c in flood:
            await c.close()


def _https_post(port: int, ca: Path, client: Pair, path: str, doc: object) -> tuple[int, dict[str, object]]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(client.cert, client.key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(doc))
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def test_https_gateway_with_client_certificates_acts_as_the_cn(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    pair = ca.issue("server", server=True)
    root, alice = ca.issue("root"), ca.issue("alice")
    port = free_port()
    async with gateway_server(
        bcrypt_cost=4,
        listen_client_http_urls=[f"https://127.0.0.1:{port}"],
        cert_file=str(pair.cert),
        key_file=str(pair.key),
        trusted_ca_file=str(ca.cert),
        client_cert_auth=True,
    ):

        async def call(who: Pair, path: str, doc: object) -> tuple[int, dict[str, object]]:
            return await asyncio.to_thread(_https_post, port, ca.cert, who, path, doc)

        nopw = {"options": {"no_password": True}}
        for path, doc in [
            ("/v3/auth/user/add", {"name": "root", **nopw}),
            ("/v3/auth/role/add", {"name": "root"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/user/add", {"name": "alice", **nopw}),
            ("/v3/auth/role/add", {"name": "app"}),
            ("/v3/auth/role/grant", {"name": "app", "perm": {"permType": "WRITE", "key": b64("app/x")}}),
            ("/v3/auth/user/grant", {"user": "alice", "role": "app"}),
            ("/v3/auth/enable", {}),
        ]:
            assert (await call(root, path, doc))[0] == 200, path
        # no token: the verified certificate's CN is the user
        assert (await call(alice, "/v3/kv/put", {"key": b64("app/x"), "value": b64("1")}))[0] == 200
        status, doc = await call(alice, "/v3/kv/put", {"key": b64("other"), "value": b64("1")})
        assert (status, doc["message"]) == (403, "etcdserver: permission denied")
        assert (await call(root, "/v3/kv/put", {"key": b64("other"), "value": b64("1")}))[0] == 200
