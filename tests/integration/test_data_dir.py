"""The data dir: a damaged one is refused and left untouched, a foreign one is never taken over.

In-process servers on real LevelDB data dirs; the CLI's one-line refusal is in e2e/test_datadir.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import stat
from pathlib import Path

import grpc
import pytest

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.server.app import Server
from metastore_core.storage.datadir import MARKER_NAME, DataDirError

from conftest import free_port


def _config(data_dir: Path) -> Config:
    return Config(
        data_dir=data_dir,
        listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
        listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
    )


async def _serve(data_dir: Path, puts: range = range(0)) -> int:
    """Start a daemon on data_dir, put key/N for N in puts, stop; the number of keys it held."""
    server = Server(_config(data_dir))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports[0]}") as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            for i in puts:
                await kv.Put(pb.PutRequest(key=b"key/%05d" % i, value=b"v" * 100))
            return (await kv.Range(pb.RangeRequest(key=b"key/", range_end=b"key0", count_only=True))).count
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's shape of store: keys in a table file, 50 more in the write-ahead log."""
    data = tmp_path_factory.mktemp("stored") / "data"

    async def build() -> None:
        await _serve(data, range(1000))
        await _serve(data)  # reopen: the log becomes a table
        assert await _serve(data, range(1000, 1050)) == 1050

    asyncio.run(build())
    return data


def _tree(path: Path) -> dict[str, str]:
    """Every file under path with a hash of its bytes (to show a refusal changed nothing)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


async def _refused(data_dir: Path) -> str:
    with pytest.raises(DataDirError) as info:
        await Server(_config(data_dir)).start()
    return str(info.value)


@pytest.mark.parametrize("damage", ["db/CURRENT", "db/"])
async def test_a_data_dir_missing_its_store_is_refused_and_left_untouched(
    stored: Path, tmp_path: Path, damage: str
) -> None:
    data = tmp_path / "data"
    shutil.copytree(stored, data)
    target = data / damage
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    before = _tree(data)
    message = await _refused(data)
    assert f"data dir {data} holds a metastore store, but {damage} is missing" in message
    assert "untouched" in message
    assert _tree(data) == before  # not even a LevelDB LOG or LOCK file appeared
    assert await _refused(data) == message  # and again: nothing was "repaired" in between


async def test_a_directory_that_is_not_ours_is_refused_and_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # like /tmp: other people's files, mode 1777
    shared.mkdir()
    (shared / "someone-elses.txt").write_text("hello")
    shared.chmod(0o1777)
    message = await _refused(shared)
    assert message == (
        f"data dir {shared} is not empty and is not a metastore data dir (no {MARKER_NAME}); "
        "refusing to use it: give a new or empty directory"
    )
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert sorted(p.name for p in shared.iterdir()) == ["someone-elses.txt"]


async def test_an_existing_empty_dir_is_used_as_it_is_and_the_store_inside_is_private(tmp_path: Path) -> None:
    data = tmp_path / "mounted"
    data.mkdir()
    data.chmod(0o755)
    assert await _serve(data, range(3)) == 3
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # not chmod'ed
    assert stat.S_IMODE((data / "db").stat().st_mode) == 0o700
    assert (data / MARKER_NAME).is_file()
    assert await _serve(data) == 3


async def test_a_store_from_before_markers_is_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert await _serve(data, range(5)) == 5
    (data / MARKER_NAME).unlink()  # as a data dir written by an older metastore
    assert await _serve(data) == 5
    assert (data / MARKER_NAME).is_file()
    # and once marked, losing the store is refused like any other
    shutil.rmtree(data / "db")
    assert "db/ is missing" in await _refused(data)


async def test_leveldb_files_without_current_and_without_marker_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _serve(data, range(5))
    (data / MARKER_NAME).unlink()
    (data / "db" / "CURRENT").unlink()
    before = _tree(data)
    assert "db/ holds files but no CURRENT" in await _refused(data)
    assert _tree(data) == before
