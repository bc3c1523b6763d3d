"""Client load for the limit tests, run as a separate process (python load_client.py MODE ...).

hold ENDPOINT N         open N raw TCP connections that finish the HTTP/2 preface, print
                        "HELD <n>", keep them until stdin closes
slow ENDPOINT N SECONDS start N concurrent Sleep(SECONDS) calls of the test fault service
                        over several connections, print "STARTED", then one JSON line
                        {"codes": {code: count}}
watch ENDPOINT N        open N Watch streams, print "OPEN <n>", keep them until stdin closes,
                        then print one JSON line {"ended": n, "codes": {...}}
flood ENDPOINT N        keep N raw TCP connections open that never send a byte, opening a new
                        one whenever the server closes one; print "FLOODING", and when stdin
                        closes one JSON line {"opened": n, "closed_by_server": n}
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections import Counter

# HTTP/2 client preface plus an empty SETTINGS frame: enough for grpc-core to keep the connection.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def hold(endpoint: str, n: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 256)), hard))
    host, port = endpoint.rsplit(":", 1)
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(PREFACE)
        socks.append(s)
    print(f"HELD {len(socks)}", flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()


async def slow(endpoint: str, n: int, seconds: float) -> None:
    import grpc
    from google.protobuf import empty_pb2, wrappers_pb2

    channels = [
        grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(10)
    ]
    calls = [
        ch.unary_unary(
            "/metastore.testing.Faults/Sleep",
            request_serializer=wrappers_pb2.DoubleValue.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        for ch in channels
    ]
    for ch in channels:
        await ch.channel_ready()

    async def one(i: int) -> str:
        try:
            await calls[i % len(calls)](wrappers_pb2.DoubleValue(value=seconds), timeout=seconds + 60)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    print("STARTED", flush=True)
    codes = Counter(await asyncio.gather(*tasks))
    print(json.dumps({"codes": codes}), flush=True)
    for ch in channels:
        await ch.close()


async def watch(endpoint: str, n: int) -> None:
    import grpc

    from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)
    ]
    stubs = [rpc_pb2_grpc.WatchStub(ch) for ch in channels]
    codes: Counter[str] = Counter()
    created = 0
    all_created = asyncio.Event()

    async def one(i: int) -> None:
        nonlocal created
        req = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=f"w{i}".encode()))
        call = stubs[i % len(stubs)].Watch(iter([req]))
        try:
            async for resp in call:
                if resp.created:
                    created += 1
                    if created == n:
                        all_created.set()
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await asyncio.wait_for(all_created.wait(), 60)
    print(f"OPEN {created}", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps({"ended": sum(codes.values()), "codes": codes}), flush=True)
    for ch in channels:
        await ch.close()


async def flood(endpoint: str, n: int) -> None:
    host, port = endpoint.rsplit(":", 1)
    opened = closed = 0
    stop = asyncio.Event()

    async def one() -> None:
        nonlocal opened, closed
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.01)
                continue
            opened += 1
            try:
                while await reader.read(4096):  # the server's SETTINGS frame, then EOF when it closes us
                    pass
                closed += 1
            except OSError:
                closed += 1
            finally:
                writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    await asyncio.sleep(0.5)
    print("FLOODING", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"opened": opened, "closed_by_server": closed}), flush=True)


def main() -> None:
    mode, endpoint, *rest = sys.argv[1:]
    if mode == "hold":
        hold(endpoint, int(rest[0]))
    elif mode == "slow":
        asyncio.run(slow(endpoint, int(rest[0]), float(rest[1])))
    elif mode == "watch":
        asyncio.run(watch(endpoint, int(rest[0])))
    elif mode == "flood":
        asyncio.run(flood(endpoint, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
