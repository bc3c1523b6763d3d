"""The watermark: a store that comes back older than its last acknowledged write is refused.

In-process servers on real LevelDB data dirs. LevelDB's write-ahead log is cut at a record
boundary, the one damage LevelDB itself cannot see.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import grpc
import pytest

from metastore_core.config import Config
from metastore_core.member.node import Node
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.watermark import NAME, SLOT, Mark, Watermark, WatermarkError

from conftest import free_port

BLOCK = 32 * 1024  # LevelDB's log block
_HEADER = struct.Struct("<IHB")  # crc, length, type


def _config(data_dir: Path, **kw: object) -> Config:
    return Config(
        data_dir=data_dir,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        **kw,  # type: ignore[arg-type]
    )


async def _serve(data_dir: Path, puts: range = range(0), **kw: object) -> tuple[int, int]:
    """Start, put key/N for N in puts (each acknowledged), stop; (keys held, revision)."""
    server = Server(_config(data_dir, **kw))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in puts:
                await kv.Put(pb.PutRequest(key=b"key/%04d" % i, value=b"v%d" % i))
            resp = await kv.Range(pb.RangeRequest(key=b"key/", range_end=b"key0", count_only=True))
            return resp.count, resp.header.revision
    finally:
        await server.stop()


def _record_ends(log: Path) -> list[int]:
    """The byte offset after each whole LevelDB log record (FULL or LAST fragment)."""
    data = log.read_bytes()
    ends, at = [], 0
    while at + _HEADER.size <= len(data):
        if BLOCK - at % BLOCK < _HEADER.size:  # a block's tail too short for a header is padding
            at += BLOCK - at % BLOCK
            continue
        _, length, kind = _HEADER.unpack_from(data, at)
        at += _HEADER.size + length
        if kind in (1, 4):  # FULL, LAST
            ends.append(at)
    return ends


def _newest_log(data_dir: Path) -> Path:
    return max((data_dir / "db").glob("*.log"), key=lambda p: int(p.stem))


async def _refused(data_dir: Path) -> str:
    with pytest.raises(WatermarkError) as info:
        await Server(_config(data_dir)).start()
    return str(info.value)


async def test_a_log_cut_at_a_record_boundary_is_refused_and_the_repair_flag_starts_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    assert await _serve(data, range(100)) == (100, 101)
    log = _newest_log(data)
    ends = _record_ends(log)
    with open(log, "r+b") as f:
        f.truncate(ends[-27])  # the last 26 records: 26 acknowledged puts, nothing LevelDB can see
    message = await _refused(data)
    # (a health probe's write may be among the records cut: it is no command)
    found = re.search(r"it holds index (\d+) \(revision (\d+)\)", message)
    assert found is not None, message
    held = int(found[1])
    assert 74 <= held <= 75 and int(found[2]) == held + 1, message
    assert f"metastore.watermark says index 100 (revision 101): {100 - held} acknowledged" in message
    assert message.endswith(f"refusing to start (--unsafe-accept-lost-writes starts at revision {held + 1})")
    # refused again (nothing was reset by the refusal), then started on purpose
    assert await _refused(data) == message
    with caplog.at_level(logging.ERROR):
        assert await _serve(data, unsafe_accept_lost_writes=True) == (held, held + 1)
    assert f"starting anyway at revision {held + 1} (--unsafe-accept-lost-writes)" in caplog.text
    assert await _serve(data, range(200, 201)) == (held + 1, held + 2)  # the new watermark holds


async def test_a_deleted_log_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _serve(data, range(40))
    await _serve(data)  # the log of the first run becomes a table
    await _serve(data, range(40, 50))
    _newest_log(data).unlink()
    assert "it holds index 40 (revision 41)" in await _refused(data)


async def test_a_missing_watermark_is_refused_unless_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _serve(data, range(3))
    (data / NAME).unlink()
    message = await _refused(data)
    assert f"{data / NAME} is missing: cannot tell whether acknowledged writes were lost" in message
    assert await _serve(data, unsafe_accept_lost_writes=True) == (3, 4)
    assert Watermark.open(data).mark.index == 3


async def test_restarts_after_kills_and_unsynced_runs_are_never_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _serve(data, range(5))
    # a kill between a batch and its watermark leaves the store ahead of the watermark
    wm = Watermark.open(data)
    wm.write(Mark(wm.mark.index - 1, wm.mark.revision - 1))
    wm.close()
    assert await _serve(data) == (5, 6)
    assert Watermark.open(data).mark == Mark(5, 6)  # brought up to the store at load
    # without fsync the watermark is written at shutdown only, and then it is exact
    assert await _serve(data, range(5, 8), fsync=False) == (8, 9)
    assert Watermark.open(data).mark == Mark(8, 9)


async def test_every_synced_batch_moves_the_watermark_before_it_is_acknowledged(tmp_path: Path) -> None:
    wm = Watermark.create(tmp_path, Mark(0, 1))
    node = Node(LevelDBStorage(tmp_path / "db"), Config(), watermark=wm)
    node.load()
    for i in range(3):
        resp = await node.write(pb.PutRequest(key=b"k", value=b"%d" % i))
        assert Watermark.open(tmp_path).mark == Mark(i + 1, resp.header.revision)
    node.close()


def test_a_torn_slot_falls_back_to_the_other_and_two_bad_slots_are_refused(tmp_path: Path) -> None:
    wm = Watermark.create(tmp_path, Mark(1, 2))
    wm.write(Mark(2, 3, frozenset({1})))
    wm.write(Mark(3, 4))  # seq 3: slot 1
    wm.close()
    path = tmp_path / NAME
    raw = bytearray(path.read_bytes())
    raw[SLOT + 20] ^= 0xFF  # tear the newest slot
    path.write_bytes(bytes(raw))
    assert Watermark.open(tmp_path).mark == Mark(2, 3, frozenset({1}))
    raw[20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(WatermarkError, match="damaged"):
        Watermark.open(tmp_path)
