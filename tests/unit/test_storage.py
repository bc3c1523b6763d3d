"""One conformance suite for every storage backend."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from metastore_core.storage import Storage, StorageError
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage


@pytest.fixture(params=["memory", "leveldb"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    s: Storage = MemoryStorage() if request.param == "memory" else LevelDBStorage(tmp_path / "db")
    yield s
    s.close()


def test_get_missing_is_none(storage: Storage) -> None:
    assert storage.get(b"nope") is None


def test_batch_puts_and_deletes_atomically(storage: Storage) -> None:
    storage.write([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
    storage.write([(b"b", None), (b"d", b"4"), (b"a", b"9")])
    assert [(k, v) for k, v in storage.scan(b"", b"\xff")] == [(b"a", b"9"), (b"c", b"3"), (b"d", b"4")]


def test_scan_is_half_open_and_ordered(storage: Storage) -> None:
    storage.write([(bytes([i]), bytes([i])) for i in range(10)])
    assert [k for k, _ in storage.scan(b"\x02", b"\x05")] == [b"\x02", b"\x03", b"\x04"]
    assert [k for k, _ in storage.scan(b"\x02", b"\x05", reverse=True)] == [b"\x04", b"\x03", b"\x02"]


def test_view_is_point_in_time(storage: Storage) -> None:
    storage.write([(b"k", b"old")])
    view = storage.view()
    storage.write([(b"k", b"new"), (b"k2", b"x")])
    assert view.get(b"k") == b"old"
    assert [k for k, _ in view.scan(b"", b"\xff")] == [b"k"]
    view.close()
    assert storage.get(b"k") == b"new"


def test_size_grows_with_data(storage: Storage) -> None:
    before = storage.size()
    storage.write([(b"k%d" % i, b"v" * 100) for i in range(100)])
    storage.compact()
    assert storage.size() > before


def test_memory_size_is_the_bytes_held_after_puts_overwrites_and_deletes() -> None:
    rnd = random.Random(3)
    s = MemoryStorage()
    model: dict[bytes, bytes] = {}
    for _ in range(300):
        batch: list[tuple[bytes, bytes | None]] = []
        for _ in range(rnd.randrange(1, 5)):
            key = b"k%d" % rnd.randrange(40)
            value = None if rnd.random() < 0.3 else b"v" * rnd.randrange(0, 50)
            batch.append((key, value))
        s.write(batch)
        for key, value in batch:
            if value is None:
                model.pop(key, None)
            else:
                model[key] = value
        assert s.size() == sum(len(k) + len(v) for k, v in model.items())


def test_leveldb_survives_reopen(tmp_path: Path) -> None:
    s = LevelDBStorage(tmp_path / "db")
    s.write([(b"a", b"1")], sync=True)
    s.close()
    s2 = LevelDBStorage(tmp_path / "db")
    assert s2.get(b"a") == b"1"
    s2.close()


def test_leveldb_reopen_never_creates_a_store_and_a_failed_one_leaves_clear_errors(tmp_path: Path) -> None:
    s = LevelDBStorage(tmp_path / "db")
    s.write([(b"a", b"1")], sync=True)
    (tmp_path / "db" / "CURRENT").rename(tmp_path / "CURRENT.away")
    with pytest.raises(StorageError, match="does not exist"):
        s.reopen()  # an empty store here would lose everything: refused instead
    with pytest.raises(StorageError, match="closed: reopening it failed"):
        s.get(b"a")
    assert s.size_in_use() > 0  # figures still answer
    (tmp_path / "CURRENT.away").rename(tmp_path / "db" / "CURRENT")
    s.reopen()
    assert s.get(b"a") == b"1"
    s.close()


def test_leveldb_refuses_to_create_a_store_unless_asked(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="create_if_missing is false"):
        LevelDBStorage(tmp_path / "db", create=False)
