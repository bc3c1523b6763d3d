"""Storage that refuses writes: a full disk, a refusing file, a read-only data dir.

In-process servers on real LevelDB: a full disk is a small tmpfs, a refusing file is an
immutable (chattr +i) write-ahead log, a read-only data dir a read-only bind mount. Mounting
needs root, as CI runs.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import grpc
import pytest

from metastore_core.config import Config
from metastore_core.member import committer
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.storage.datadir import DataDirError

from conftest import free_port

A = pb.AlarmRequest


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committer, "RETRY_S", 0.2)
    monkeypatch.setattr("metastore_core.member.guard.RETRY_S", 0.2)


@asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[Server, grpc.aio.Channel]]:
    cfg = Config(
        data_dir=data_dir,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        health_check_interval_s=0.1,
    )
    server = Server(cfg)
    await server.start()
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}")
    try:
        yield server, ch
    finally:
        await ch.close()
        await server.stop()


@contextmanager
def mounted(path: Path, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *options, str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


async def alarms(ch: grpc.aio.Channel) -> list[str]:
    resp = await rpc_pb2_grpc.MaintenanceStub(ch).Alarm(A(action=A.GET))
    return [pb.AlarmType.Name(a.alarm) for a in resp.alarms]


async def disarm(ch: grpc.aio.Channel) -> None:
    """What `etcdctl alarm disarm` does: GET, then DEACTIVATE each."""
    m = rpc_pb2_grpc.MaintenanceStub(ch)
    for a in (await m.Alarm(A(action=A.GET))).alarms:
        await m.Alarm(A(action=A.DEACTIVATE, memberID=a.memberID, alarm=a.alarm))


async def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)


async def fill(kv: rpc_pb2_grpc.KVStub, acked: dict[bytes, bytes], start: int) -> grpc.aio.AioRpcError:
    """Put compressible 1 KB values until the disk is full; the error that said so."""
    for i in range(start, start + 20_000):
        key, value = b"fill/%05d" % i, b"%05d" % i * 200
        try:
            await kv.Put(pb.PutRequest(key=key, value=value))
        except grpc.aio.AioRpcError as exc:
            return exc
        acked[key] = value
    raise AssertionError("the disk never filled")


async def all_acked_present(kv: rpc_pb2_grpc.KVStub, acked: dict[bytes, bytes]) -> None:
    resp = await kv.Range(pb.RangeRequest(key=b"fill/", range_end=b"fill0"))
    got = {x.key: x.value for x in resp.kvs}
    missing = [k for k, v in acked.items() if got.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost"


async def test_a_full_disk_recovers_once_writes_fit_again_and_its_alarm_survives_restarts(
    tmp_path: Path,
) -> None:
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as mnt:
        ballast = [mnt / f"ballast{i}" for i in range(10)]
        for b in ballast:
            b.write_bytes(os.urandom(256 << 10))  # 2.5 MiB, freed a piece at a time
        data = mnt / "data"
        acked: dict[bytes, bytes] = {}
        async with serving(data) as (server, ch):
            kv = rpc_pb2_grpc.KVStub(ch)
            err = await fill(kv, acked, 0)
            assert err.code() == grpc.StatusCode.UNAVAILABLE and "No space left on device" in err.details()
            assert len(acked) > 300
            assert await alarms(ch) == ["NOSPACE"]
            log_bytes = sum(p.stat().st_size for p in (data / "db").glob("*.log"))
            # Free less than the log's size plus 1 MiB (what recovery used to want): enough for
            # what a reopen writes (the log's values compress) and for small writes after it.
            ballast.pop().unlink()
            ballast.pop().unlink()
            assert os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize < log_bytes + (1 << 20)
            assert server.node is not None
            node = server.node
            await until(lambda: node.figures.storage_recoveries_total == 1, "recovered")
            # recovered without a restart; NOSPACE stays until disarmed, as etcd's does
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv.Put(pb.PutRequest(key=b"more", value=b"x"))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await disarm(ch)
            await kv.Put(pb.PutRequest(key=b"after", value=b"recovered"))
            await all_acked_present(kv, acked)
            # full again: this time the daemon stops before anyone frees space
            err = await fill(kv, acked, 10_000)
            assert await alarms(ch) == ["NOSPACE"]
        ballast.pop().unlink()
        ballast.pop().unlink()
        async with serving(data) as (server, ch):
            kv = rpc_pb2_grpc.KVStub(ch)
            assert await alarms(ch) == ["NOSPACE"]  # the store never took it: the watermark kept it
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv.Put(pb.PutRequest(key=b"more", value=b"x"))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await all_acked_present(kv, acked)
        async with serving(data) as (server, ch):  # and the store has it now
            assert await alarms(ch) == ["NOSPACE"]
            await disarm(ch)
            await rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"last", value=b"1"))
        async with serving(data) as (server, ch):
            assert await alarms(ch) == []


async def test_a_file_that_refuses_writes_is_no_corruption_and_writes_resume_on_their_own(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with serving(data) as (server, ch):
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(pb.PutRequest(key=b"a", value=b"1"))
        log = max((data / "db").glob("*.log"), key=lambda p: int(p.stem))
        subprocess.run(["chattr", "+i", str(log)], check=True)  # its open handle now gets EPERM
        try:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await kv.Put(pb.PutRequest(key=b"b", value=b"2"))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            details = info.value.details() or ""
            assert "Operation not permitted" in details and "until the storage takes writes again" in details
            assert await alarms(ch) == []  # not CORRUPT, not NOSPACE
            assert (await kv.Range(pb.RangeRequest(key=b"a"))).kvs[0].value == b"1"
        finally:
            subprocess.run(["chattr", "-i", str(log)], check=True)
        assert server.node is not None
        node = server.node
        await until(lambda: node.storage_failure() is None, "writes resumed")
        await kv.Put(pb.PutRequest(key=b"b", value=b"3"))
        assert (await kv.Range(pb.RangeRequest(key=b"b"))).kvs[0].value == b"3"
        assert await alarms(ch) == []


async def test_a_read_only_data_dir_is_refused_as_not_writable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with serving(data):
        pass
    with mounted(tmp_path / "ro", "--bind", str(data)) as ro:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        with pytest.raises(DataDirError) as info:
            await Server(Config(data_dir=ro)).start()
    assert str(info.value) == f"data dir {ro} is not writable (Read-only file system); refusing to start"
