"""What the reliability layer costs: the whole layer on vs off, in the same run.

    python -m benchmarks.reliability_overhead            # ~2 min on 2 cores
    python -m benchmarks.reliability_overhead --quick    # ~30 s

Two measurements:

1. micro: the wrapped behaviour of one method called in a loop in-process (no gRPC, no I/O),
   with the layers (recovery+metrics, limits with its timeout, auth) and without them
   (the servicer method alone). This is the layer's own cost per call,
   with almost no noise.
2. end to end: two daemons (memory backend, same code, one built with the layer and one with
   `layers=[]`), driven by a separate load-client process (grpc.aio, 64 calls in flight over 4
   channels), Range and Put, interleaved rounds so machine drift hits both. Reports median
   throughput, the throughput cost in %, the wall-clock cost per request and the server CPU
   per request (from /proc), on vs off.

The spec's budget is < 1 % throughput and < 20 us per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- micro
def micro(n: int) -> dict[str, float]:
    """Per-call cost of the layers around a do-nothing unary behaviour, in microseconds."""
    from metastore_core.pb.etcdserverpb import rpc_pb2
    from metastore_core.server.layers import reliability_layers
    from metastore_core.server.layers.limits import Limiter
    from metastore_core.server.layers.metrics import RequestMetrics
    from metastore_core.server.layers.recovery import Recovery
    from metastore_core.server.methods import Call, method_info

    info = method_info("etcdserverpb.KV", "Range", False, False, rpc_pb2.RangeRequest)
    resp = rpc_pb2.RangeResponse()

    async def bare(request: Any, call: Any) -> Any:
        return resp

    wrapped = bare
    for layer in reliability_layers(Recovery(), Limiter(5000, 30.0), RequestMetrics()):
        wrapped = layer(info, wrapped)
    req, ctx = rpc_pb2.RangeRequest(key=b"k"), Call()

    async def loop(fn: Any) -> float:
        for _ in range(2000):
            await fn(req, ctx)
        t0 = time.perf_counter()
        for _ in range(n):
            await fn(req, ctx)
        return (time.perf_counter() - t0) / n * 1e6

    async def both() -> dict[str, float]:
        off, on = [], []
        for _ in range(11):  # short interleaved rounds: machine noise hits both sides alike
            off.append(await loop(bare))
            on.append(await loop(wrapped))
        diffs = [a - b for a, b in zip(on, off, strict=True)]
        return {
            "off_us": statistics.median(off),
            "on_us": statistics.median(on),
            "layer_us": statistics.median(diffs),
            "layer_us_min": min(on) - min(off),
        }

    return asyncio.run(both())


# ---------------------------------------------------------------------- servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(mode: str, port: int, metrics_port: int) -> None:
    """Child process: one daemon with (on) or without (off) the reliability layer."""
    from metastore_core.config import Config
    from metastore_core.server.app import Server

    async def main() -> None:
        cfg = Config(
            backend="memory",
            listen_client_urls=[f"http://127.0.0.1:{port}"],
            listen_metrics_urls=[f"http://127.0.0.1:{metrics_port}"],
        )
        server = Server(cfg, layers=None if mode == "on" else [])
        await server.start()
        print("READY", flush=True)
        await server.serve_until_stopped()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


# ---------------------------------------------------------------------- client
async def client_window(endpoint: str, workload: str, seconds: float, inflight: int) -> dict[str, Any]:
    import grpc

    from metastore_core.pb.etcdserverpb import rpc_pb2

    opts = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(endpoint, options=opts) for _ in range(4)]
    method = "/etcdserverpb.KV/Range" if workload == "range" else "/etcdserverpb.KV/Put"
    calls = [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in channels]
    if workload == "range":
        payloads = [rpc_pb2.RangeRequest(key=b"key/%04d" % i).SerializeToString() for i in range(100)]
    else:
        payloads = [
            rpc_pb2.PutRequest(key=b"key/%04d" % i, value=b"v" * 256).SerializeToString() for i in range(100)
        ]
    for ch in channels:
        await ch.channel_ready()
    state = {"phase": 0, "ops": 0}

    async def slot(i: int) -> None:
        call = calls[i % len(calls)]
        n = i
        while state["phase"] < 2:
            await call(payloads[n % 100])
            n += 1
            if state["phase"] == 1:
                state["ops"] += 1

    tasks = [asyncio.ensure_future(slot(i)) for i in range(inflight)]
    await asyncio.sleep(0.5)  # warm-up
    state["phase"] = 1
    print("WINDOW", flush=True)  # the orchestrator reads server CPU now
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    ops = state["ops"]
    took = time.perf_counter() - t0
    state["phase"] = 2
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    return {"ops": ops, "seconds": took}


def run_window(endpoint: str, pid: int, workload: str, seconds: float, inflight: int) -> dict[str, float]:
    args = ["--client", endpoint, workload, str(seconds), str(inflight)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.reliability_overhead", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "WINDOW"
    cpu0 = cpu_seconds(pid)
    line = proc.stdout.readline()
    cpu1 = cpu_seconds(pid)
    proc.wait(30)
    res = json.loads(line)
    ops_s = res["ops"] / res["seconds"]
    return {"ops_s": ops_s, "cpu_us": (cpu1 - cpu0) / max(res["ops"], 1) * 1e6}


def end_to_end(rounds: int, seconds: float, inflight: int) -> dict[str, Any]:
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for mode in ("on", "off"):
            port = _free_port()
            args = ["--serve", mode, str(port), str(_free_port())]
            p = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.reliability_overhead", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                cwd=ROOT,
            )
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
            servers[mode] = (p, f"127.0.0.1:{port}")
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for workload in ("range", "put"):
            results[workload] = {"on": [], "off": []}
            for r in range(rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for mode in order:
                    p, ep = servers[mode]
                    results[workload][mode].append(run_window(ep, p.pid, workload, seconds, inflight))
        summary: dict[str, Any] = {}
        for workload, by_mode in results.items():
            on = statistics.median(x["ops_s"] for x in by_mode["on"])
            off = statistics.median(x["ops_s"] for x in by_mode["off"])
            cpu_on = statistics.median(x["cpu_us"] for x in by_mode["on"])
            cpu_off = statistics.median(x["cpu_us"] for x in by_mode["off"])
            paired = [
                (b["ops_s"] - a["ops_s"]) / b["ops_s"] * 100
                for a, b in zip(by_mode["on"], by_mode["off"], strict=True)
            ]
            summary[workload] = {
                "paired_cost_pct_median": round(statistics.median(paired), 2),
                "ops_s_on": round(on),
                "ops_s_off": round(off),
                "throughput_cost_pct": round((off - on) / off * 100, 2),
                "wall_us_per_request": round((1 / on - 1 / off) * 1e6 * inflight, 1),
                "server_cpu_us_on": round(cpu_on, 1),
                "server_cpu_us_off": round(cpu_off, 1),
                "server_cpu_cost_us": round(cpu_on - cpu_off, 1),
                "rounds_on": [round(x["ops_s"]) for x in by_mode["on"]],
                "rounds_off": [round(x["ops_s"]) for x in by_mode["off"]],
            }
        return summary
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "METRICS_PORT"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--client", nargs=4, metavar=("EP", "WORKLOAD", "SECONDS", "INFLIGHT"), help=argparse.SUPPRESS
    )
    ns = ap.parse_args()
    if ns.serve:
        serve(ns.serve[0], int(ns.serve[1]), int(ns.serve[2]))
        return
    if ns.client:
        ep, workload, seconds, inflight = ns.client
        print(json.dumps(asyncio.run(client_window(ep, workload, float(seconds), int(inflight)))), flush=True)
        return
    rounds, seconds = (2, 2.0) if ns.quick else (7, 3.0)
    report: dict[str, Any] = {"machine": f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"}
    report["micro"] = {k: round(v, 2) for k, v in micro(5_000 if ns.quick else 20_000).items()}
    m = report["micro"]
    print(
        f"micro: layer {m['layer_us']:.2f} us/call (median of paired rounds; best case "
        f"{m['layer_us_min']:.2f}; on {m['on_us']:.2f}, off {m['off_us']:.2f})",
        flush=True,
    )
    report["end_to_end"] = end_to_end(rounds, seconds, 64)
    for workload, s in report["end_to_end"].items():
        print(
            f"{workload}: on {s['ops_s_on']} ops/s, off {s['ops_s_off']} ops/s, "
            f"cost {s['throughput_cost_pct']}% (paired rounds {s['paired_cost_pct_median']}%, "
            f"{s['wall_us_per_request']} us/request wall); "
            f"server CPU {s['server_cpu_us_on']} vs "
            f"{s['server_cpu_us_off']} us/op (+{s['server_cpu_cost_us']} us)",
            flush=True,
        )
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"reliability_overhead-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
