"""Either snapshot format through one door: detection, status figures, and etcdctl's size text."""

from __future__ import annotations

import io
from pathlib import Path

import google_crc32c
import pytest

from metastore_cli.snapshot import etcd_bytes
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import etcdsnap, snapfile
from metastore_core.storage import snapshot as S
from metastore_core.storage.memory import MemoryStorage

from enginekit import Engine


@pytest.fixture(scope="module")
def engine() -> Engine:
    e = Engine(MemoryStorage())
    for i in range(30):
        e.write(pb.PutRequest(key=b"k%d" % (i % 7), value=b"v" * i))
    e.write(pb.DeleteRangeRequest(key=b"k3"))
    return e


def files(engine: Engine, tmp_path: Path) -> tuple[Path, Path]:
    ours, etcd = tmp_path / "ours.snap", tmp_path / "etcd.snap"
    with open(ours, "wb") as f:
        S.write(engine.storage.view(), f)
    with open(etcd, "wb") as f:
        etcdsnap.write(engine.storage.view(), f)
    return ours, etcd


def test_detect_tells_the_formats_apart(engine: Engine, tmp_path: Path) -> None:
    ours, etcd = files(engine, tmp_path)
    assert snapfile.detect(ours) == snapfile.METASTORE and snapfile.detect(etcd) == snapfile.ETCD
    data = bytearray(etcd.read_bytes())
    data[16:20] = bytes(4)  # meta page 0's magic gone: meta page 1 still says bbolt
    etcd.write_bytes(data)
    assert snapfile.detect(etcd) == snapfile.ETCD
    with pytest.raises(S.SnapshotError, match="meta page 0: bad magic") as info:
        snapfile.verify(etcd)
    assert info.value.offset == 16
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 9000)
    with pytest.raises(S.SnapshotError, match="not a snapshot") as info:
        snapfile.verify(junk)
    assert info.value.offset == 0


def test_status_of_both_formats_describes_the_same_store(engine: Engine, tmp_path: Path) -> None:
    ours, etcd = files(engine, tmp_path)
    a, b = snapfile.verify(ours), snapfile.verify(etcd)
    rev = engine.store.committed_rev
    assert a.status.revision == b.status.revision == rev
    assert b.status.total_keys >= b.details["records"] == rev - 1  # one record per revision here
    assert a.status.total_size == ours.stat().st_size - 32
    assert b.status.total_size == etcd.stat().st_size - 32
    records = list(S.read(io.BytesIO(ours.read_bytes())))[1:]
    assert a.status.hash == google_crc32c.value(b"".join(k + v for k, v in records))  # type: ignore[operator]
    assert a.status.total_keys == len(records)


def test_progress_reaches_its_total(engine: Engine, tmp_path: Path) -> None:
    for path in files(engine, tmp_path):
        seen: list[tuple[int, int]] = []
        snapfile.verify(path, progress=lambda done, total, seen=seen: seen.append((done, total)))
        assert seen and seen[-1][0] == seen[-1][1] and all(d <= t for d, t in seen)


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (9, "9 B"), (999, "999 B"), (1000, "1.0 kB"), (24576, "25 kB"), (1_500_000, "1.5 MB"),
     (17_440_768, "17 MB"), (2 << 30, "2.1 GB")],
)  # fmt: skip
def test_sizes_print_as_etcdctl_prints_them(n: int, text: str) -> None:
    assert etcd_bytes(n) == text  # go-humanize Bytes, as `etcdctl snapshot status` shows TOTAL SIZE
