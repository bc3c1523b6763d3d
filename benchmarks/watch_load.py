"""Watch load: metastore and etcd in the same run, one fresh server of each.

    python benchmarks/watch_load.py                  # all scenarios, both servers (~2-4 min)
    python benchmarks/watch_load.py --quick          # smaller counts
    python benchmarks/watch_load.py --targets metastore --scenarios fanout

Scenarios (every watcher watches the key that is written, unless said otherwise):
- fanout:  1,000 watchers on 10 streams, 1,000 sequential puts. Every watcher must see every
           revision exactly once, in order (checked per watcher). Reports delivery latency
           (put sent -> event read by the client) p50/p99/max and events/s.
- one-key: 64 watchers on one stream, 5,000 puts from 16 concurrent writers: events/s.
- slow:    one stalled watcher (its stream is never read) on a prefix that also gets a 64 KiB
           value every 10th put, plus 100 live watchers on 4 streams; 1,000 sequential puts.
           Live watchers' latency p50/p99, server RSS growth, then the stalled stream is
           read and must hold every revision since it started, in order.

Clients: latency figures use etcdctl (Go clientv3, `watch -i -w json`, one process per
stream) because a Python client reading ~1M messages is itself the bottleneck (~50 us per
message: it measured etcd at p50 16 s). Its output does not name the watcher, so those runs
check counts per stream (every revision exactly once per watcher). `fanout-py` repeats the
fan-out with Python readers that check order per watcher (metastore only unless --py-etcd).
Times are CLOCK_MONOTONIC, shared by all processes; clients share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import procfs
from benchmarks.servers import Target, clean_env
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def create(key: bytes, end: bytes = b"") -> pb.WatchRequest:
    return pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end))


# ---------------------------------------------------------------- reader process
async def reader(endpoint: str, streams: int, per: int, key: bytes, expect: int, out: Path) -> None:
    """Open streams x per watchers on key; read until each saw `expect` events; check order."""
    channels = [grpc.aio.insecure_channel(endpoint, options=[("reader", i)]) for i in range(streams)]
    calls = []
    for ch in channels:
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        for _ in range(per):
            await call.write(create(key))
            r = await call.read()
            assert r.created, r
        calls.append(call)
    print("ready", flush=True)
    revs, times = array("q"), array("d")
    bad = 0

    async def read(call: Any) -> None:
        nonlocal bad
        last: dict[int, int] = {}
        seen: dict[int, int] = {}
        total, want = 0, per * expect
        while total < want:
            r = await call.read()
            now = time.monotonic()
            wid = r.watch_id
            prev = last.get(wid, 0)
            for e in r.events:
                rev = e.kv.mod_revision
                if rev <= prev:
                    bad += 1  # out of order or duplicate
                prev = rev
                revs.append(rev)
                times.append(now)
            last[wid] = prev
            seen[wid] = seen.get(wid, 0) + len(r.events)
            total += len(r.events)
        bad += sum(1 for n in seen.values() if n != expect)

    t0 = time.process_time()
    await asyncio.gather(*(read(c) for c in calls))
    cpu = time.process_time() - t0
    with open(out, "wb") as f:
        revs.tofile(f)
        times.tofile(f)
    print(json.dumps({"events": len(revs), "bad": bad, "cpu_s": cpu}), flush=True)
    for c in calls:
        c.cancel()
    for ch in channels:
        await ch.close()


def ctl_reader(endpoint: str, streams: int, per: int, key: bytes, expect: int, out: Path) -> None:
    """Like reader(), with etcdctl (Go clientv3) as the client: one `etcdctl watch -i`
    process per stream, per watchers each. Its JSON output does not name the watcher, so
    the check is per stream: every revision exactly `per` times (complete, no duplicates)."""
    with grpc.insecure_channel(endpoint) as ch:
        rev = rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"\0")).header.revision + 1
    exe = shutil.which("etcdctl") or "/usr/bin/etcdctl"
    cmds = "".join(f"watch --rev={rev} {key.decode()}\n" for _ in range(per))
    env = dict(os.environ, ETCDCTL_API="3")
    procs = [
        subprocess.Popen(
            [exe, f"--endpoints={endpoint}", "watch", "-i", "-w", "json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for _ in range(streams)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(cmds.encode())
        p.stdin.flush()
    time.sleep(1.0)  # let the watchers be created (--rev makes the start race-free anyway)
    print("ready", flush=True)
    revs, times = array("q"), array("d")
    bad = 0
    lock = threading.Lock()
    find = re.compile(rb'"mod_revision":(\d+)').findall

    def read(p: subprocess.Popen[bytes]) -> None:
        nonlocal bad
        assert p.stdout is not None
        counts: dict[int, int] = {}
        got, want = 0, per * expect
        for line in p.stdout:
            now = time.monotonic()
            found = [int(x) for x in find(line)]
            with lock:
                for r in found:
                    revs.append(r)
                    times.append(now)
            for r in found:
                counts[r] = counts.get(r, 0) + 1
            got += len(found)
            if got >= want:
                break
        with lock:
            bad += sum(1 for n in counts.values() if n != per) + abs(len(counts) - expect)

    t0 = time.monotonic()
    threads = [threading.Thread(target=read, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.kill()
        p.wait()
    with open(out, "wb") as f:
        revs.tofile(f)
        times.tofile(f)
    print(json.dumps({"events": len(revs), "bad": bad, "cpu_s": time.monotonic() - t0}), flush=True)


def spawn_reader(
    endpoint: str, streams: int, per: int, key: bytes, expect: int, out: Path, client: str = "py"
) -> subprocess.Popen[str]:
    mode = "--reader" if client == "py" else "--ctl-reader"
    args = [sys.executable, "-m", "benchmarks.watch_load", mode, endpoint, str(streams), str(per)]
    args += [key.decode(), str(expect), str(out)]
    root = Path(__file__).resolve().parent.parent
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=root, env=clean_env())
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        raise RuntimeError(f"reader did not start: {line!r}")
    return p


def collect(
    p: subprocess.Popen[str], out: Path, sent: dict[int, float]
) -> tuple[list[float], dict[str, Any]]:
    assert p.stdout is not None
    summary = json.loads(p.stdout.readline())
    p.wait()
    n = summary["events"]
    revs, times = array("q"), array("d")
    with open(out, "rb") as f:
        revs.fromfile(f, n)
        times.fromfile(f, n)
    lat = [t - sent[r] for r, t in zip(revs, times, strict=True) if r in sent]
    summary["last"] = max(times) if n else 0.0
    return lat, summary


# ---------------------------------------------------------------- writer
async def write(endpoint: str, key: bytes, puts: int, conc: int, bulk_every: int = 0) -> dict[int, float]:
    """Puts to key (conc writers); returns revision -> monotonic time the put was sent."""
    sent: dict[int, float] = {}
    big = b"x" * 64 * 1024
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        todo = iter(range(puts))

        async def writer() -> None:
            for i in todo:
                if bulk_every and i % bulk_every == 0:
                    await kv.Put(pb.PutRequest(key=key + b"/bulk", value=big))
                t = time.monotonic()
                r = await kv.Put(pb.PutRequest(key=key, value=b"%d" % i))
                sent[r.header.revision] = t

        await asyncio.gather(*(writer() for _ in range(conc)))
    return sent


def summarize(lat: list[float], events: int, first_sent: float, last_recv: float) -> dict[str, Any]:
    lat.sort()
    span = max(last_recv - first_sent, 1e-9)
    return {
        "events": events,
        "events_per_s": events / span,
        "p50_ms": pct(lat, 0.5) * 1e3,
        "p99_ms": pct(lat, 0.99) * 1e3,
        "max_ms": (lat[-1] if lat else float("nan")) * 1e3,
    }


async def fanout(
    t: Target, streams: int, per: int, puts: int, conc: int, tag: str, work: Path, client: str
) -> dict[str, Any]:
    key = f"fan/{tag}".encode()
    procs = []
    split = [streams // 2, streams - streams // 2] if streams > 1 and client == "py" else [streams]
    for i, n in enumerate(s for s in split if s):
        out = work / f"{t.name}-{tag}-{i}.bin"
        procs.append((spawn_reader(t.endpoint, n, per, key, puts, out, client), out))
    cpu0 = procfs.cpu_seconds(t.pid)
    sent = await write(t.endpoint, key, puts, conc)
    lat: list[float] = []
    bad = events = 0
    last = 0.0
    client_cpu = 0.0
    for p, out in procs:
        got, s = await asyncio.to_thread(collect, p, out, sent)
        lat += got
        bad += s["bad"]
        events += s["events"]
        last = max(last, s["last"])
        client_cpu += s["cpu_s"]
    res = summarize(lat, events, min(sent.values()), last)
    res.update(
        watchers=streams * per,
        streams=streams,
        puts=puts,
        order_errors=bad,
        complete=events == streams * per * puts,
        server_cpu_s=procfs.cpu_seconds(t.pid) - cpu0,
        client_cpu_s=client_cpu,
        client=client,
    )
    return res


async def slow(t: Target, puts: int, work: Path, client: str) -> dict[str, Any]:
    key = b"slow/hot"
    rss0 = procfs.status_kib(t.pid, "VmRSS")
    async with grpc.aio.insecure_channel(t.endpoint, options=[("stalled", 1)]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        first = (await kv.Range(pb.RangeRequest(key=b"\0"))).header.revision + 1
        stalled = rpc_pb2_grpc.WatchStub(ch).Watch()
        await stalled.write(create(b"slow/", b"slow0"))  # never read until the end
        out = work / f"{t.name}-slow.bin"
        p = spawn_reader(t.endpoint, 4, 25, key, puts, out, client)
        sent = await write(t.endpoint, key, puts, 1, bulk_every=10)
        lat, s = await asyncio.to_thread(collect, p, out, sent)
        rss1 = procfs.status_kib(t.pid, "VmRSS")
        res = summarize(lat, s["events"], min(sent.values()), s["last"])
        res.update(live_order_errors=s["bad"], rss_growth_mib=(rss1 - rss0) / 1024)
        # Now read the stalled stream: everything since it started, in order, nothing missing.
        last = (await kv.Range(pb.RangeRequest(key=b"\0"))).header.revision
        revs: list[int] = []
        created = await stalled.read()
        assert created.created
        t0 = time.monotonic()
        canceled = ""
        while not revs or revs[-1] < last:
            r = await asyncio.wait_for(stalled.read(), 30)
            if r.canceled:
                canceled = r.cancel_reason or f"compacted at {r.compact_revision}"
                break
            revs.extend(e.kv.mod_revision for e in r.events)
        res.update(
            stalled_complete=revs == list(range(first, last + 1)),
            stalled_events=len(revs),
            stalled_canceled=canceled,
            stalled_drain_s=time.monotonic() - t0,
        )
        stalled.cancel()
    return res


async def bench(t: Target, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "fanout" in a.scenarios:
        out["fanout"] = await fanout(t, 10, a.per_stream, a.puts, 1, "fanout", work, "ctl")
        print(f"  {t.name} fanout: {out['fanout']}", flush=True)
    if "fanout-py" in a.scenarios and (t.kind == "metastore" or a.py_etcd):
        out["fanout_py"] = await fanout(t, 10, a.per_stream, a.puts, 1, "fanoutpy", work, "py")
        print(f"  {t.name} fanout-py: {out['fanout_py']}", flush=True)
    if "one-key" in a.scenarios:
        out["one_key"] = await fanout(t, 1, 64, a.one_key_puts, 16, "onekey", work, "ctl")
        print(f"  {t.name} one-key: {out['one_key']}", flush=True)
    if "slow" in a.scenarios:
        out["slow"] = await slow(t, a.puts, work, "ctl")
        print(f"  {t.name} slow: {out['slow']}", flush=True)
    out["peak_rss_mib"] = procfs.status_kib(t.pid, "VmHWM") / 1024
    return out


def report(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("fanout 1000 watchers/10 streams, 1000 puts: events/s", "fanout", ("events_per_s",), "{:,.0f}"),
        ("fanout delivery p50 / p99 / max ms", "fanout", ("p50_ms", "p99_ms", "max_ms"), "{:.1f}"),
        ("fanout complete / count errors", "fanout", ("complete", "order_errors"), "{}"),
        ("fanout server CPU s", "fanout", ("server_cpu_s",), "{:.1f}"),
        ("fanout, Python readers: events/s", "fanout_py", ("events_per_s",), "{:,.0f}"),
        ("fanout, Python readers: p50 / p99 ms", "fanout_py", ("p50_ms", "p99_ms"), "{:.1f}"),
        (
            "fanout, Python readers: complete / per-watcher order errors",
            "fanout_py",
            ("complete", "order_errors"),
            "{}",
        ),
        ("one key, 64 watchers, 16 writers: events/s", "one_key", ("events_per_s",), "{:,.0f}"),
        ("one key delivery p50 / p99 ms", "one_key", ("p50_ms", "p99_ms"), "{:.1f}"),
        ("slow consumer: live p50 / p99 / max ms", "slow", ("p50_ms", "p99_ms", "max_ms"), "{:.1f}"),
        ("slow consumer: server RSS growth MiB", "slow", ("rss_growth_mib",), "{:.1f}"),
        (
            "slow consumer: stalled stream complete later",
            "slow",
            ("stalled_complete", "stalled_events"),
            "{}",
        ),
        ("peak RSS MiB", None, ("peak_rss_mib",), "{:.0f}"),
    ]
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, part, keys, fmt in rows:
        cells = []
        for n in names:
            d = results[n] if part is None else results[n].get(part, {})
            cells.append(" / ".join(fmt.format(d[k]) for k in keys) if all(k in d for k in keys) else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--reader", "--ctl-reader"):
        ep, streams, per, key, expect, out = sys.argv[2:8]
        if sys.argv[1] == "--reader":
            asyncio.run(reader(ep, int(streams), int(per), key.encode(), int(expect), Path(out)))
        else:
            ctl_reader(ep, int(streams), int(per), key.encode(), int(expect), Path(out))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="etcd,metastore")
    ap.add_argument("--scenarios", default="fanout,fanout-py,one-key,slow")
    ap.add_argument("--py-etcd", action="store_true", help="also run fanout-py on etcd (slow client)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--metastore-arg", action="append", default=[])
    ap.add_argument("--workdir", help="keep data dirs and server logs here (default: a temp dir)")
    a = ap.parse_args()
    a.scenarios = set(a.scenarios.split(","))
    a.puts = 200 if a.quick else 1000
    a.per_stream = 20 if a.quick else 100
    a.one_key_puts = 1000 if a.quick else 5000
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="watch-load-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    print(f"load average before: {procfs.loadavg()}", flush=True)
    for name in a.targets.split(","):
        extra = a.metastore_arg if name == "metastore" else []
        t = Target(name, name, work, extra=extra)
        t.start()
        try:
            results[name] = asyncio.run(bench(t, a, work))
        finally:
            t.stop()
    print(f"load average after: {procfs.loadavg()}")
    print(report(results))
    res_dir = Path(__file__).resolve().parent / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "watch_load.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if os.environ.get("WATCH_LOAD_KEEP") is None and not a.workdir:
        for f in work.glob("*.bin"):
            f.unlink()


if __name__ == "__main__":
    main()
