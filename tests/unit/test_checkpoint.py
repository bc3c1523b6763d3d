"""The index checkpoint: used only when it stands for the store, and then equal to a scan.

test_mvcc_model.py (CheckpointMachine) restarts from checkpoints at random points against the
oracle; these pin each reason a checkpoint is refused, a store that lost writes after one, and
the warm-up of values a checkpoint start leaves in storage.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metastore_core.engine.ranges import range_at
from metastore_core.mvcc import checkpoint
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage.leveldb import LevelDBStorage
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine, index_state


def _engine(tmp_path: Path) -> Engine:
    e = Engine(MemoryStorage(), checkpoint_dir=tmp_path)
    for i in range(30):
        e.write(pb.PutRequest(key=b"k%02d" % (i % 12), value=b"v%d" % i, lease=0))
    e.write(pb.DeleteRangeRequest(key=b"k03"))
    return e


def _save(e: Engine) -> None:
    made = e.store.checkpoint()
    assert made is not None
    e.store.save_checkpoint(*made)


def _scan(e: Engine) -> tuple[int, int, dict[bytes, tuple[list[int], int, int, int]]]:
    return index_state(MVCCStore(e.storage))


def test_a_checkpoint_and_the_writes_after_it_give_the_scanned_index(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    _save(e)
    e.write(pb.PutRequest(key=b"k01", value=b"after"))
    e.write(pb.DeleteRangeRequest(key=b"k02"))
    e.write(pb.PutRequest(key=b"new", value=b"after"))
    e = e.reopen()
    assert e.store.loaded_from.startswith("index checkpoint")
    assert index_state(e.store) == _scan(e)


def test_a_file_without_its_token_in_the_store_is_refused_and_removed(tmp_path: Path) -> None:
    """A crash after the file was written and before the store took the token."""
    e = _engine(tmp_path)
    made = e.store.checkpoint()
    assert made is not None
    checkpoint.write(tmp_path, made[1])
    e = e.reopen()
    assert "does not hold its token" in e.store.loaded_from
    assert not (tmp_path / checkpoint.NAME).exists()
    assert index_state(e.store) == _scan(e)


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    _save(e)
    raw = bytearray((tmp_path / checkpoint.NAME).read_bytes())
    raw[-5] ^= 0x40
    (tmp_path / checkpoint.NAME).write_bytes(bytes(raw))
    e = e.reopen()
    assert "CRC" in e.store.loaded_from
    assert index_state(e.store) == _scan(e)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    _save(e)
    raw = (tmp_path / checkpoint.NAME).read_bytes()
    (tmp_path / checkpoint.NAME).write_bytes(raw[: len(raw) - 20])
    e = e.reopen()
    assert "CRC" in e.store.loaded_from
    assert index_state(e.store) == _scan(e)


def test_the_checkpoint_of_another_store_is_refused(tmp_path: Path) -> None:
    """A whole file beside a store it was not taken of (a data dir rebuilt or copied under it):
    its header fits and the store has a put at its newest revision too, but the store holds
    another token, so it is scanned."""
    mine = Engine(MemoryStorage())
    for i in range(40):
        mine.write(pb.PutRequest(key=b"mine%02d" % i, value=b"v"))
    mine.storage.write([(L.META_INDEX_CHECKPOINT, checkpoint.new_token())], sync=True)
    other = Engine(MemoryStorage(), checkpoint_dir=tmp_path)
    for i in range(30):
        other.write(pb.PutRequest(key=b"k%02d" % i, value=b"v"))
    _save(other)
    e = Engine(mine.storage, checkpoint_dir=tmp_path)
    assert "does not hold its token" in e.store.loaded_from
    assert index_state(e.store) == _scan(e)
    assert e.store.index.get(b"k00") is None


def test_compaction_takes_the_token_away(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    _save(e)
    assert e.storage.get(L.META_INDEX_CHECKPOINT) is not None
    e.write(pb.CompactionRequest(revision=e.store.committed_rev - 3))
    assert e.storage.get(L.META_INDEX_CHECKPOINT) is None
    e = e.reopen()
    assert e.store.loaded_from.startswith("scan")
    assert index_state(e.store) == _scan(e)


def test_a_store_that_lost_writes_after_the_checkpoint_then_took_others(tmp_path: Path) -> None:
    """The tail after a checkpoint is lost (a cut write-ahead log) and the store, started anyway
    (--unsafe-accept-lost-writes), writes other keys at the same revisions: the checkpoint still
    holds (the token came before the loss), and the replayed tail is the new one."""
    e = _engine(tmp_path)
    _save(e)
    at = e.store.committed_rev
    e.write(pb.PutRequest(key=b"lost", value=b"1"))
    e.write(pb.PutRequest(key=b"k05", value=b"lost"))
    start, stop = L.rev_range(at + 1, 1 << 62)
    e.storage.write([(k, None) for k, _ in list(e.storage.scan(start, stop))], sync=True)
    e = e.reopen()
    assert e.store.committed_rev == at
    e.write(pb.PutRequest(key=b"other", value=b"2"))
    e.write(pb.PutRequest(key=b"k07", value=b"other"))
    e = e.reopen()
    assert e.store.loaded_from.startswith("index checkpoint")
    assert index_state(e.store) == _scan(e)
    assert e.store.index.get(b"lost") is None


def test_warm_holds_what_the_checkpoint_left_and_never_an_older_value(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    _save(e)
    e = e.reopen()
    store = e.store
    assert store.values.held == 0 and store.cold_below == store.committed_rev
    steps = store.warm(step=3)
    next(steps)
    e.write(pb.PutRequest(key=b"k11", value=b"written during warm-up"))
    for _ in steps:
        pass
    assert store.cold_below == 0
    live = [(k, h) for k, h in store.index.all() if h.alive]
    assert store.values.held == len(live)
    for _, h in live:  # each held value is its key's newest record
        e_ = h.entries[-1]
        assert h.newest == e.storage.get(L.rev_key(e_ >> 33, (e_ >> 1) & 0xFFFFFFFF))
    assert store.index.get(b"k11").newest is not None


# A child writes a LevelDB store and a checkpoint, and is killed (SIGKILL) at a chosen point of
# save_checkpoint: "file" between the durable file and the token's write, "token" after the
# token, then more writes. Whatever it left, the next start must build the index a scan builds.
_CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, "tests/unit")
from enginekit import Engine
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage.leveldb import LevelDBStorage

where, point = Path(sys.argv[1]), sys.argv[2]
storage = LevelDBStorage(where / "db")
e = Engine(storage, checkpoint_dir=where)
for i in range(300):
    e.write(pb.PutRequest(key=b"k%03d" % (i % 120), value=b"v%d" % i))
e.write(pb.DeleteRangeRequest(key=b"k01", range_end=b"k02"))
write = storage.write
def write_then_die(batch, sync=True):
    if point == "file" and any(k == L.META_INDEX_CHECKPOINT for k, _ in batch):
        os.kill(os.getpid(), signal.SIGKILL)
    write(batch, sync=sync)
storage.write = write_then_die
e.store.save_checkpoint(*e.store.checkpoint())
for i in range(50):
    e.write(pb.PutRequest(key=b"after%02d" % i, value=b"x"))
e.write(pb.DeleteRangeRequest(key=b"k05", range_end=b"k06"))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize(("point", "loaded_from"), [("file", "scan"), ("token", "index checkpoint")])
def test_kill_9_while_saving_a_checkpoint(tmp_path: Path, point: str, loaded_from: str) -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), point], cwd=root, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / checkpoint.NAME).exists()
    e = Engine(LevelDBStorage(tmp_path / "db"), checkpoint_dir=tmp_path)
    assert e.store.loaded_from.startswith(loaded_from)
    state = index_state(e.store)
    e.storage.close()
    scanned = index_state(MVCCStore(LevelDBStorage(tmp_path / "db")))
    assert state == scanned
    keys = state[2]
    assert len(keys) == (120 if point == "file" else 170)


def test_warm_stops_at_the_value_budget_and_counts_what_it_held(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    one = len(e.store.index.get(b"k00").newest or b"")
    _save(e)
    e = Engine(e.storage, checkpoint_dir=tmp_path, value_cache_bytes=4 * one + one // 2)
    store = e.store
    said = list(store.warm(step=2))[-1]
    assert said == store.values.held <= 4
    assert 0 < store.values.bytes <= 4 * one + one // 2
    assert _get_all(e) == _get_all(Engine(e.storage))


def _get_all(e: Engine) -> list[tuple[bytes, bytes]]:
    r = range_at(e.store, pb.RangeRequest(key=b"\0", range_end=b"\0"), e.store.committed_rev)
    return [(kv.key, kv.value) for kv in r.kvs]
