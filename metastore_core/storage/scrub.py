"""The integrity scrub: read every stored record and check it.

Run at start-up (`--corrupt-check-on-start`) and periodically
(`--corrupt-check-interval`). On LevelDB every block checksum is verified
(a normal read skips them); with CRC on, every MVCC record's CRC is checked;
always, each record's payload must agree with its revision key (a flipped
bit in a key would otherwise move a value to another revision unnoticed).
Pure and synchronous: the server runs it on a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from metastore_core.pb.mvccpb.kv_pb2 import KeyValue
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError

MAX_PROBLEMS = 10


@dataclass
class ScrubReport:
    """What a scrub found."""

    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def _scan(storage: Storage, start: bytes, stop: bytes) -> Iterator[tuple[bytes, bytes]]:
    verified = getattr(storage, "scrub_scan", None)
    if verified is not None:
        yield from verified(start, stop)
    else:
        yield from storage.scan(start, stop)


def scrub(storage: Storage, codec: L.RecordCodec) -> ScrubReport:
    """Check every record of storage; never raises for corruption, reports it."""
    report = ScrubReport()
    try:
        for skey, record in _scan(storage, b"", b"\xff"):
            report.records += 1
            if not skey.startswith(L.REV_PREFIX):
                continue
            if len(skey) not in (17, 18):
                report.add(f"malformed revision key {skey!r}")
                continue
            try:
                kv = KeyValue.FromString(codec.decode(record, skey))
            except L.CorruptRecord as exc:
                report.add(str(exc))
                continue
            except DecodeError:
                report.add(f"undecodable record {skey!r}")
                continue
            main, _, _ = L.parse_rev_key(skey)
            if kv.mod_revision != main:
                report.add(f"record {skey!r} says mod_revision {kv.mod_revision}, its key says {main}")
    except StorageError as exc:
        report.add(f"storage: {exc}")
    return report
