"""Profile a server under one workload with py-spy (`pip install py-spy`); print the top costs.

    python -m benchmarks.profile --workload put --concurrency 64 --seconds 10
    python -m benchmarks.profile --target floor-aio --workload get --native

Starts a fresh server, drives it with the benchmark client, samples it with `py-spy record`
(raw collapsed stacks, kept with --keep) and prints the functions with the most samples,
self (the frame on top) and inclusive (anywhere on the stack).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.run import TARGETS, Client
from benchmarks.servers import Target

_LINE = re.compile(r":\d+\)$")


def _frame(f: str) -> str:
    """'send (grpc/_cython/...pyx:123)' -> 'send (grpc/_cython/...pyx)' so lines merge."""
    return _LINE.sub(")", f.strip())


# Where a sample's top frame belongs. py-spy (without --native) cannot see inside Cython, so
# grpc.aio's own work (call handling, (de)serialization, the completion queue) shows up as the
# self time of asyncio's Handle._run (the loop callback running Cython code) and of the
# Thread.run of grpc's poller thread.
GROUPS = [
    ("grpc.aio (Cython, seen as Handle._run/Thread.run self)", ("Handle._run (", "Thread.run (")),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py", "_weakrefset.py", "threading.py")),
    ("executor hop (concurrent.futures)", ("concurrent/futures",)),
    ("LevelDB write+fsync (GIL released)", ("storage/leveldb.py", "plyvel")),
    (
        "request layers (recovery, limits, metrics, auth, rpc)",
        ("server/recovery", "server/limits", "server/metrics", "server/authz", "server/rpc", "server/guard"),
    ),
    (
        "adapters + node + committer",
        (
            "server/kv",
            "server/node",
            "server/committer",
            "server/quota",
            "server/watch",
            "server/lease",
            "server/",
        ),
    ),
    ("engine + MVCC + index", ("engine/", "mvcc/", "sortedcontainers", "storage/layout")),
    ("protobuf", ("google/protobuf", "_message")),
]


def group_of(frame: str) -> str:
    for name, needles in GROUPS:
        if any(n in frame for n in needles):
            return name
    return "other"


def top(raw: Path, n: int) -> str:
    groups: collections.Counter[str] = collections.Counter()
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += c
        self_c[frames[-1]] += c
        groups[group_of(frames[-1])] += c
        for f in set(frames):
            incl[f] += c
    out = [f"{total} samples", "\nby component (self samples):"]
    out += [f"  {100 * c / total:5.1f}%  {g}" for g, c in groups.most_common()]
    out.append("\nself (top of stack):")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(n)]
    out.append("\ninclusive:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="metastore", choices=[t for t in TARGETS if t != "etcd"])
    ap.add_argument("--workload", default="put")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames (grpc core, protobuf)")
    ap.add_argument("--gil", action="store_true", help="only sample the thread holding the GIL")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--metastore-arg", action="append", default=[])
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    work = Path(tempfile.mkdtemp(prefix="metastore-profile-"))
    kind, extra = TARGETS[a.target]
    t = Target(a.target, kind, work, extra + (a.metastore_arg if kind == "metastore" else []))
    client: Client | None = None
    try:
        t.start()
        client = Client(uvloop=False)
        raw = work / "profile.txt"
        cmd = [spy, "record", "--pid", str(t.pid), "--rate", str(a.rate), "--format", "raw", "-o", str(raw)]
        # --native needs to stop the process for each sample; without it sampling does not pause it.
        cmd += ["--duration", str(int(a.seconds))] + (["--native"] if a.native else ["--nonblocking"])
        cmd += ["--gil"] if a.gil else []
        spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        res = client.ask(
            {
                "workload": a.workload,
                "concurrency": a.concurrency,
                "endpoint": t.endpoint,
                "server_pid": t.pid,
                "warmup": 0.5,
                "duration": a.seconds,
                "channels": 4,
                "seq": 1,
                "pool": int(20000 * a.seconds),
                "token": t.token,
            },
            timeout=a.seconds + 300,
        )
        _, err = spy_proc.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')[-2000:]}")
        cpu = res.get("server_cpu_s", 0) / res["ops"] * 1e6 if res.get("ops") else 0
        print(f"{a.target} {a.workload}@{a.concurrency}: {res.get('rate', 0):.0f} ops/s, {cpu:.0f} us CPU/op")
        print(top(raw, a.top))
        if a.keep:
            print(f"raw stacks: {raw}")
    finally:
        if client is not None:
            client.close()
        t.stop()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
