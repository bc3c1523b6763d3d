"""CRC and corruption: a mismatch is never served; it fails loudly and raises CORRUPT.

In-process servers (real gRPC on loopback, real LevelDB) so 30 flip trials stay fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
from pathlib import Path

import grpc
import pytest

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.memory import MemoryStorage

from conftest import free_port

CORRUPT = "etcdserver: corrupt cluster"


def _config(**kw: object) -> Config:
    return Config(
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        enable_crc=True,
        **kw,  # type: ignore[arg-type]
    )


async def _running(cfg: Config) -> tuple[Server, grpc.aio.Channel]:
    server = Server(cfg)
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}")


def _flip_record(storage: MemoryStorage, key: bytes) -> None:
    for skey, record in list(storage.scan(L.REV_PREFIX, L.prefix_end(L.REV_PREFIX))):
        payload = L.RecordCodec(True).decode(record)
        if key in payload:
            bad = bytearray(record)
            bad[-1] ^= 0x40
            storage.write([(skey, bytes(bad))])
            return
    raise AssertionError("record not found")


async def test_crc_mismatch_on_read_is_data_loss_alarm_and_refused_writes() -> None:
    server, ch = await _running(_config(backend="memory"))
    try:
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(rpc_pb2.PutRequest(key=b"good", value=b"fine"))
        await kv.Put(rpc_pb2.PutRequest(key=b"bad", value=b"will rot"))
        assert isinstance(server.storage, MemoryStorage)
        _flip_record(server.storage, b"will rot")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kv.Range(rpc_pb2.RangeRequest(key=b"bad"))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert info.value.details() == CORRUPT
        alarms = await rpc_pb2_grpc.MaintenanceStub(ch).Alarm(
            rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET)
        )
        assert [a.alarm for a in alarms.alarms] == [rpc_pb2.CORRUPT]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kv.Put(rpc_pb2.PutRequest(key=b"new", value=b"x"))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        # good data is still served; the corrupt read was not counted as a panic
        assert (await kv.Range(rpc_pb2.RangeRequest(key=b"good"))).kvs[0].value == b"fine"
        assert server.recovery.panic_count == 0
        assert server.node is not None
        ok, reason = server.monitor.healthy(server.node.figures.alarm_names(), set())
        assert not ok and "CORRUPT" in reason
    finally:
        await ch.close()
        await server.stop()


async def test_periodic_scrub_raises_corrupt() -> None:
    server, ch = await _running(_config(backend="memory", corrupt_check_interval_s=0.05))
    try:
        kv = rpc_pb2_grpc.KVStub(ch)
        await kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"value"))
        assert server.node is not None and isinstance(server.storage, MemoryStorage)
        _flip_record(server.storage, b"value")
        for _ in range(100):
            if server.node.figures.alarm_names():
                break
            await asyncio.sleep(0.02)
        assert server.node.figures.alarm_names() == ["CORRUPT"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kv.Put(rpc_pb2.PutRequest(key=b"new", value=b"x"))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
    finally:
        await ch.close()
        await server.stop()


# ---------------------------------------------------------------------- bit flips, default flags
# No --enable-crc, no --corrupt-check-on-start: what every user runs.
N_KEYS = 300


def _value(i: int, gen: int) -> bytes:
    """64 bytes no compressor shrinks, so a value's bytes can be found in its table file."""
    seed = b"%d/%d" % (i, gen)
    return hashlib.sha256(seed).digest() + hashlib.sha256(seed + b"+").digest()


def _default(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


async def _put_gen(kv: rpc_pb2_grpc.KVStub, gen: int, keys: range) -> None:
    for i in keys:
        await kv.Put(rpc_pb2.PutRequest(key=b"key/%04d" % i, value=_value(i, gen)))


async def _make_base(data_dir: Path) -> dict[int, int]:
    """Generations 0 and 1 of every key in a table file, generation 2 of a third of them in
    the write-ahead log; returns each key's revision of generation 0 (history reads)."""
    server, ch = await _running(_default(data_dir))
    kv = rpc_pb2_grpc.KVStub(ch)
    await _put_gen(kv, 0, range(N_KEYS))
    gen0 = {i: i + 2 for i in range(N_KEYS)}
    await _put_gen(kv, 1, range(N_KEYS))
    await ch.close()
    await server.stop()
    server, ch = await _running(_default(data_dir))  # reopen: LevelDB turns its log into a table
    await _put_gen(rpc_pb2_grpc.KVStub(ch), 2, range(0, N_KEYS, 3))
    await ch.close()
    await server.stop()
    return gen0


def _latest(i: int) -> bytes:
    return _value(i, 2 if i % 3 == 0 else 1)


def _flip_bit(data_dir: Path, rng: random.Random) -> str:
    db = data_dir / "db"
    files = sorted(p for p in db.iterdir() if p.suffix in (".ldb", ".log") and p.stat().st_size)
    target = rng.choice(files)
    data = bytearray(target.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    target.write_bytes(bytes(data))
    return f"{target.name}@{at}"


async def _trial(data_dir: Path, gen0: dict[int, int]) -> str:
    """'refused' (start-up found it), 'corrupt' (a read found it) or 'clean' (every value exact)."""
    try:
        server, ch = await _running(_default(data_dir))
    except StorageError as exc:
        assert "orrupt" in str(exc), exc
        return "refused"
    try:
        kv = rpc_pb2_grpc.KVStub(ch)
        detected = False
        for i in range(N_KEYS):
            for rev, want in ((0, _latest(i)), (gen0[i], _value(i, 0))):
                try:
                    resp = await kv.Range(rpc_pb2.RangeRequest(key=b"key/%04d" % i, revision=rev))
                except grpc.aio.AioRpcError as exc:
                    assert (exc.code(), exc.details()) == (grpc.StatusCode.DATA_LOSS, CORRUPT), exc
                    detected = True
                    continue
                # never wrong bytes: either the exact value or a refusal
                assert [(x.key, x.value) for x in resp.kvs] == [(b"key/%04d" % i, want)], (i, rev)
        return "corrupt" if detected else "clean"
    finally:
        await ch.close()
        await server.stop()


async def test_thirty_random_bit_flips_in_tables_and_logs_never_serve_wrong_data(tmp_path: Path) -> None:
    base = tmp_path / "base"
    gen0 = await _make_base(base)
    rng = random.Random(20261127)
    outcomes: dict[str, list[str]] = {"refused": [], "corrupt": [], "clean": []}
    for n in range(30):
        trial = tmp_path / f"trial{n}"
        shutil.copytree(base, trial)
        where = _flip_bit(trial, rng)
        outcomes[await _trial(trial, gen0)].append(where)
        shutil.rmtree(trial)
    print({k: len(v) for k, v in outcomes.items()}, outcomes["clean"])
    # _trial asserted that no read returned wrong bytes. A flip may leave every value exact (an
    # unused byte of a table's index or filter); most are refused at start.
    assert len(outcomes["refused"]) + len(outcomes["corrupt"]) >= 20, outcomes
    assert any(".log@" in w for w in outcomes["refused"]), outcomes
    assert any(".ldb@" in w for w in outcomes["refused"]), outcomes


async def test_a_table_flip_found_by_a_read_while_serving_is_data_loss_and_the_corrupt_alarm(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    gen0 = await _make_base(data)
    server, ch = await _running(_default(data))
    try:
        kv = rpc_pb2_grpc.KVStub(ch)
        # flip a bit of an old value in its table file while the daemon runs: history reads go to
        # the table (current values are held in memory, read from verified blocks at start-up)
        old = _value(150, 0)[:16]  # (a value may straddle two blocks)
        table = next(t for t in (data / "db").glob("*.ldb") if old in t.read_bytes())
        raw = bytearray(table.read_bytes())
        at = raw.index(old) + 3
        raw[at] ^= 0x04
        table.write_bytes(bytes(raw))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kv.Range(rpc_pb2.RangeRequest(key=b"key/0150", revision=gen0[150]))
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.DATA_LOSS, CORRUPT)
        assert server.node is not None
        await asyncio.sleep(0.05)  # the alarm is proposed in the background
        assert server.node.figures.alarm_names() == ["CORRUPT"]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await kv.Put(rpc_pb2.PutRequest(key=b"new", value=b"x"))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        # current values are still exact
        resp = await kv.Range(rpc_pb2.RangeRequest(key=b"key/0150"))
        assert resp.kvs[0].value == _latest(150)
        assert server.recovery.panic_count == 0
    finally:
        await ch.close()
        await server.stop()


def test_daemon_refuses_to_start_on_corruption_with_a_clear_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import ROOT, start_metastore

    data = tmp_path / "data"
    p = start_metastore(data)  # default flags
    with grpc.insecure_channel(p.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(50):
            kv.Put(rpc_pb2.PutRequest(key=b"k%02d" % i, value=b"v" * 100), timeout=5)
    assert p.stop() == 0
    log = max((data / "db").glob("*.log"), key=lambda f: f.stat().st_size)
    raw = bytearray(log.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    log.write_bytes(bytes(raw))
    args = ["serve", "--data-dir", str(data)]
    args += ["--listen-client-urls", f"http://127.0.0.1:{free_port()}"]
    args += ["--listen-metrics-urls", f"http://127.0.0.1:{free_port()}"]
    r = subprocess.run(
        [sys.executable, "-m", "metastore_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 1
    last = r.stderr.splitlines()[-1]  # after the start-up log lines
    assert last.startswith("Error: ") and "orrupt" in last, r.stderr
