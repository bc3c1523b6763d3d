"""Watch end to end: etcdctl watch, the Python clients, progress, leases, slow consumers.

One daemon for the module (progress notifications every 0.5 s, a small
per-watcher buffer so the slow-consumer path is reachable with little data);
every test uses its own keys.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc, etcdctl, run_client, start_metastore

BUFFER_EVENTS = 64
PUTS = 150


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("watch")
    cfg = d / "metastore.yaml"
    cfg.write_text(f"watch_buffer_events: {BUFFER_EVENTS}\n")
    p = start_metastore(d / "data", "--config-file", str(cfg), "--watch-progress-notify-interval", "0.5")
    yield p
    p.stop()


def current_rev(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as ch:
        r = rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=b"\0"), timeout=5)
        return int(r.header.revision)


def ctl(endpoint: str, *args: str) -> None:
    r = etcdctl(endpoint, *args)
    assert r.returncode == 0, r.stderr


def etcdctl_watch(
    endpoint: str,
    args: list[str],
    n_lines: int,
    then: Callable[[], None] = lambda: None,
    stdin: str | None = None,
    timeout: float = 10,
) -> list[str]:
    """Run `etcdctl watch ARGS`, do `then`, return the first n_lines printed lines."""
    exe = shutil.which("etcdctl")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, f"--endpoints={endpoint}", "watch", *args],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, ETCDCTL_API="3"),
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin)
            proc.stdin.flush()  # left open: interactive mode ends on EOF
        then()
        deadline = time.monotonic() + timeout
        while len(lines) < n_lines and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
        reader.join(2)
    return lines[:n_lines] if len(lines) >= n_lines else lines


# ---------------------------------------------------------------- etcdctl
def test_etcdctl_watch_key_from_revision_and_live(server: Proc) -> None:
    ep = server.endpoint
    ctl(ep, "put", "e1/a", "1")
    rev = current_rev(ep)

    def writes() -> None:
        ctl(ep, "put", "e1/a", "2")
        ctl(ep, "put", "e1/other", "x")
        ctl(ep, "del", "e1/a")

    got = etcdctl_watch(ep, [f"--rev={rev}", "e1/a"], 8, writes)
    assert got == ["PUT", "e1/a", "1", "PUT", "e1/a", "2", "DELETE", "e1/a"]


def test_etcdctl_watch_prefix_prev_kv(server: Proc) -> None:
    ep = server.endpoint
    rev = current_rev(ep) + 1

    def writes() -> None:
        ctl(ep, "put", "e2/x", "1")
        ctl(ep, "put", "e2/x", "2")
        ctl(ep, "put", "e3", "not mine")
        ctl(ep, "del", "e2/", "--prefix")

    got = etcdctl_watch(ep, [f"--rev={rev}", "--prefix", "--prev-kv", "e2/"], 13, writes)
    assert got == [
        "PUT", "e2/x", "1",
        "PUT", "e2/x", "1", "e2/x", "2",
        "DELETE", "e2/x", "2", "e2/x", "",
    ]  # fmt: skip


def test_etcdctl_watch_interactive(server: Proc) -> None:
    ep = server.endpoint
    rev = current_rev(ep) + 1

    def writes() -> None:
        ctl(ep, "put", "e4/a", "1")
        ctl(ep, "put", "e4/p/1", "2")
        ctl(ep, "put", "e4/zzz", "3")

    got = etcdctl_watch(
        ep, ["-i"], 6, writes, stdin=f"watch --rev={rev} e4/a\nwatch --rev={rev} --prefix e4/p/\n"
    )
    assert got == ["PUT", "e4/a", "1", "PUT", "e4/p/1", "2"]


def test_etcdctl_watch_survives_a_restart(tmp_path: Path) -> None:
    """A stop ends watch streams with UNAVAILABLE, as etcd's does: etcdctl resumes."""
    p = start_metastore(tmp_path / "data")
    port = int(p.endpoint.rsplit(":", 1)[1])
    try:
        rev = current_rev(p.endpoint) + 1
        restarted: list[Proc] = []

        def restart() -> None:
            ctl(p.endpoint, "put", "rs", "before")
            assert p.stop() == 0
            restarted.append(start_metastore(tmp_path / "data", port=port))
            ctl(p.endpoint, "put", "rs", "after")

        got = etcdctl_watch(p.endpoint, [f"--rev={rev}", "rs"], 6, restart, timeout=20)
        assert got == ["PUT", "rs", "before", "PUT", "rs", "after"]
    finally:
        p.stop()
        for q in restarted:
            q.stop()


def test_etcdctl_watch_compacted_exits_5(server: Proc) -> None:
    ep = server.endpoint
    ctl(ep, "put", "e5", "1")
    ctl(ep, "put", "e5", "2")
    ctl(ep, "compaction", str(current_rev(ep)))
    r = etcdctl(ep, "watch", "--rev=1", "e5", timeout=10)
    assert r.returncode == 5
    assert "required revision has been compacted" in r.stdout + r.stderr


# ---------------------------------------------------------------- Python clients
def test_aetcd_watch(server: Proc) -> None:
    run_client(
        """
        import asyncio, aetcd

        async def main():
            async with aetcd.Client(host=HOST, port=PORT) as c:
                await c.put(b"py/a", b"1")
                start = (await c.get(b"py/a")).mod_revision
                w = await c.watch(b"py/", range_end=b"py0", start_revision=start, prev_kv=True)
                await c.put(b"py/a", b"2")
                await c.delete(b"py/a")
                got = []
                async for ev in w:
                    got.append((ev.kind, ev.kv.key, ev.kv.value, ev.prev_kv.value if ev.prev_kv else None))
                    if len(got) == 3:
                        break
                await w.cancel()
                assert got == [
                    ("PUT", b"py/a", b"1", b""),
                    ("PUT", b"py/a", b"2", b"1"),
                    ("DELETE", b"py/a", b"", b"2"),
                ], got
                await c.put(b"py/b", b"x")
                await c.compact((await c.get(b"py/b")).mod_revision)
                w = await c.watch(b"py/b", start_revision=1)
                try:
                    async for ev in w:
                        raise AssertionError(f"event from a compacted revision: {ev}")
                except aetcd.exceptions.RevisionCompactedError as exc:
                    print("compacted", exc.compacted_revision)

        asyncio.run(main())
        """,
        server.endpoint,
    )


def test_etcd3_client_watch(server: Proc) -> None:
    out = run_client(
        """
        import etcd3
        c = etcd3.client(host=HOST, port=PORT)
        events, cancel = c.watch_prefix("/e3/")
        c.put("/e3/a", "1")
        c.delete("/e3/a")
        got = []
        for ev in events:
            got.append((type(ev).__name__, ev.key, ev.value))
            if len(got) == 2:
                break
        cancel()
        print(got)
        """,
        server.endpoint,
    )
    assert out.strip() == "[('PutEvent', b'/e3/a', b'1'), ('DeleteEvent', b'/e3/a', b'')]"


# ---------------------------------------------------------------- raw stream
class Stream:
    """A Watch stream read by a task (a cancelled grpc.aio read would end the call)."""

    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.call = rpc_pb2_grpc.WatchStub(ch).Watch()
        self.queue: asyncio.Queue[pb.WatchResponse] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for r in self.call:
            self.queue.put_nowait(r)

    async def send(self, **create: object) -> pb.WatchResponse:
        await self.call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(**create)))  # type: ignore[arg-type]
        return await self.get()

    async def get(self, timeout: float = 5) -> pb.WatchResponse:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


async def test_progress_notify_and_progress_request(server: Proc) -> None:
    async with grpc.aio.insecure_channel(server.endpoint) as ch:
        s = Stream(ch)
        created = await s.send(key=b"pn/idle", progress_notify=True)
        assert created.created
        note = await s.get(timeout=3)  # interval 0.5 s on this server
        assert not note.events and not note.created and note.watch_id == created.watch_id
        assert note.header.revision >= created.header.revision
        await s.call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
        while (r := await s.get()).watch_id != -1:
            pass
        assert r.header.revision == current_rev(server.endpoint)
        s.close()


async def test_lease_expiry_is_one_delete_revision(server: Proc) -> None:
    async with grpc.aio.insecure_channel(server.endpoint) as ch:
        kv, lease = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)
        s = Stream(ch)
        await s.send(key=b"ls/", range_end=b"ls0")
        lid = (await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))).ID
        for k in (b"ls/1", b"ls/2"):
            await kv.Put(pb.PutRequest(key=k, value=b"v", lease=lid))
        await s.get()
        await s.get()
        r = await s.get(timeout=10)
        assert [(e.type, e.kv.key) for e in r.events] == [(1, b"ls/1"), (1, b"ls/2")]
        assert {e.kv.mod_revision for e in r.events} == {r.header.revision}
        s.close()


# ---------------------------------------------------------------- slow consumer
async def test_slow_consumer_does_not_delay_others_and_stays_bounded(server: Proc) -> None:
    """One stalled watcher, 100 live ones, 150 puts: live watchers keep getting events
    promptly, server memory stays bounded, and the stalled one later gets every event in
    order (through the victim/catch-up path). The bound here is loose because the readers
    share this process and CI machines are noisy; benchmarks/watch_load.py measures the
    issue's 1,000-put scenario with readers in their own processes (p99 target 100 ms)."""
    proc = psutil.Process(server.pid)
    async with (
        grpc.aio.insecure_channel(server.endpoint) as ch,
        grpc.aio.insecure_channel(server.endpoint) as slow_ch,
    ):
        kv = rpc_pb2_grpc.KVStub(ch)
        first = current_rev(server.endpoint) + 1
        # The stalled watcher: a raw call nobody reads, on its own connection.
        stalled = rpc_pb2_grpc.WatchStub(slow_ch).Watch()
        await stalled.write(
            pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"sc/", range_end=b"sc0"))
        )
        live = [Stream(ch) for _ in range(4)]
        for s in live:
            for _ in range(25):
                assert (await s.send(key=b"sc/hot")).created
        rss0 = proc.memory_info().rss
        sent: dict[int, float] = {}
        got: dict[int, list[float]] = {}
        counts = [0] * len(live)

        async def drain(i: int, s: Stream) -> None:
            while counts[i] < 25 * PUTS:
                r = await s.get(timeout=30)
                t = time.perf_counter()
                for e in r.events:
                    got.setdefault(e.kv.mod_revision, []).append(t)
                counts[i] += len(r.events)

        readers = [asyncio.get_running_loop().create_task(drain(i, s)) for i, s in enumerate(live)]
        big = b"x" * 128 * 1024
        for i in range(PUTS):
            if i % 3 == 0:  # bulk for the stalled watcher only: fills its transport window
                await kv.Put(pb.PutRequest(key=b"sc/bulk", value=big))
            t = time.perf_counter()
            rev = (await kv.Put(pb.PutRequest(key=b"sc/hot", value=b"%d" % i))).header.revision
            sent[rev] = t
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        rss1 = proc.memory_info().rss
        lat = sorted(t - sent[rev] for rev, ts in got.items() for t in ts)
        assert len(lat) == 100 * PUTS
        p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
        print(f"live p50 {p50 * 1e3:.1f} ms p99 {p99 * 1e3:.1f} ms, rss +{(rss1 - rss0) >> 20} MiB")
        # A fan-out that waited on the stalled stream would never get here (it is read only
        # below); the bound only catches gross delays on a loaded CI machine.
        assert p99 < 2.0, f"live watchers' p99 {p99 * 1e3:.1f} ms"
        assert rss1 - rss0 < 64 << 20
        for s in live:
            s.close()
        # The stalled watcher now reads: it gets every event since it started, in order.
        last = max(sent)
        revs: list[int] = []
        created = await asyncio.wait_for(stalled.read(), 5)
        assert created.created
        while not revs or revs[-1] < last:
            r = await asyncio.wait_for(stalled.read(), 10)
            assert not r.canceled, r.cancel_reason
            revs.extend(e.kv.mod_revision for e in r.events)
        assert revs == list(range(first, last + 1))
        stalled.cancel()
