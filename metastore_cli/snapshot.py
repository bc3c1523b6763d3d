"""`metastore snapshot save|status|verify|restore`: take, inspect, check and restore snapshots.

`save` is online (one Maintenance/Snapshot stream from one endpoint); `status`, `verify` and
`restore` work on files, offline, like etcd 3.6's split between etcdctl and etcdutl. Every file
command takes both formats: etcd's (a bbolt database, from etcd or from metastore) and ours.
Long work shows a progress bar on stderr when it is a terminal, and nothing in a pipe. Files are
created 0600, as etcdctl does: a snapshot holds every key and value.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import typer

from metastore_cli.connect import Credentials, dial, with_credentials
from metastore_cli.ops import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_INVALID_INPUT,
    EXIT_IO,
    EXIT_SERVER_ERROR,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    ascii_table,
    check_positive,
    check_write_out,
    dial_timeout_option,
    dump_json,
    endpoints_option,
    fail,
    interrupt_event,
)
from metastore_core.config import host_port
from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from metastore_core.storage import snapfile
from metastore_core.storage import snapshot as S
from metastore_core.storage.datadir import fsync_dir

app = typer.Typer(
    name="snapshot",
    help="Save a snapshot from a running daemon; show, verify or restore a data dir from a snapshot "
    "file (etcd's format or metastore's).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

PRIVATE = 0o600  # etcdctl's fileutil.PrivateFileMode


def _one_endpoint(endpoints: str) -> str:
    eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    if len(eps) != 1:
        raise fail(f"snapshot must be requested to one selected node, not {len(eps)}", EXIT_ERROR)
    try:
        return host_port(eps[0])
    except ValueError as exc:
        raise fail(str(exc), EXIT_ERROR) from None


# ---------------------------------------------------------------------- progress
class _Progress:
    """A rich progress bar on stderr; it starts at the first report, which gives the total."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def _progress(label: str) -> Iterator[_Progress | None]:
    """A progress bar when stderr is a terminal, else None (quiet in a pipe)."""
    bar = _Progress(label) if sys.stderr.isatty() else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------- save
@app.command()
@with_credentials()
def save(
    file: Path = typer.Argument(..., help="Where to write the snapshot."),
    endpoints: str = endpoints_option("The one endpoint to ask (HOST:PORT, http:// or https://HOST:PORT)."),
    dial_timeout: float = dial_timeout_option(5.0),
    creds: Credentials = Credentials(),
) -> None:
    """Stream a consistent snapshot from a daemon to FILE (via FILE.part, 0600, fsynced, checked,
    then renamed)."""
    endpoint = _one_endpoint(endpoints)
    check_positive(dial_timeout=dial_timeout)
    part = file.with_name(file.name + ".part")
    calls: list[Any] = []  # the stream, for Ctrl-C to cancel (a KeyboardInterrupt inside grpc can be lost)
    with interrupt_event(lambda: [c.cancel() for c in calls]) as stop:
        try:
            _save(endpoint, creds, dial_timeout, part, calls)
            with _progress("verify") as bar:
                snapfile.verify(part, progress=bar)
            os.replace(part, file)
            fsync_dir(file.resolve().parent)
        except grpc.RpcError as exc:
            if stop.is_set():
                raise fail("interrupted: no snapshot saved", EXIT_INTERRUPTED) from None
            raise fail(
                f"snapshot stream failed: {exc.details() or exc.code().name}", EXIT_UNHEALTHY
            ) from None
        except S.SnapshotError as exc:
            raise fail(f"the received snapshot is invalid: {exc}", EXIT_INVALID_INPUT) from None
        except OSError as exc:
            raise fail(str(exc), EXIT_IO) from None
        finally:
            part.unlink(missing_ok=True)  # gone after the rename; a partial file must not stay
    typer.echo(f"Snapshot saved at {file}")


def _save(endpoint: str, creds: Credentials, dial_timeout: float, part: Path, calls: list[Any]) -> None:
    """Stream the snapshot into part (0600, fsynced) and check its SHA-256 trailer."""
    try:
        conn = dial(endpoint, creds, dial_timeout, [("grpc.max_receive_message_length", 1 << 30)])
    except grpc.FutureTimeoutError:
        raise fail(f"cannot connect to {endpoint}", EXIT_UNREACHABLE) from None
    except grpc.RpcError as exc:  # --user given and Authenticate refused
        raise fail(str(exc.details()), EXIT_SERVER_ERROR) from None
    with conn.channel as ch, _progress("save") as progress:
        digest = hashlib.sha256()
        received = 0
        last = b""  # the newest message is held back: the final one is the SHA-256 trailer
        with _create_private(part) as out:
            stub = rpc_pb2_grpc.MaintenanceStub(ch)
            calls.append(stub.Snapshot(rpc_pb2.SnapshotRequest(), metadata=conn.metadata))
            for msg in calls[0]:
                digest.update(last)
                out.write(msg.blob)
                received += len(msg.blob)
                last = msg.blob
                if progress is not None:
                    total = received + msg.remaining_bytes + (S.TRAILER if msg.remaining_bytes else 0)
                    progress(received, total)
            out.flush()
            os.fsync(out.fileno())
    if received % S.BLOCK != S.TRAILER or last != digest.digest():
        raise fail(f"sha256 checksum not found [bytes: {received}]", EXIT_UNHEALTHY)


def _create_private(path: Path) -> BinaryIO:
    """path opened for writing, created (or truncated) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    os.fchmod(fd, PRIVATE)  # an older file of that name may have had wider permissions
    return os.fdopen(fd, "wb")


# ---------------------------------------------------------------------- reading files
def _invalid(file: Path, exc: S.SnapshotError, write_out: str, what: str = "invalid snapshot") -> typer.Exit:
    if write_out == "json":
        typer.echo(json.dumps({"valid": False, "error": exc.reason, "offset": exc.offset}))
    return fail(f"{file}: {what}: {exc}", EXIT_INVALID_INPUT)


def _read(file: Path, write_out: str, skip_hash_check: bool, label: str) -> snapfile.Report:
    """Read and check all of FILE (either format), with a progress bar on a terminal."""
    try:
        with _progress(label) as bar:
            return snapfile.verify(file, skip_hash_check=skip_hash_check, progress=bar)
    except S.SnapshotError as exc:
        raise _invalid(file, exc, write_out) from None
    except OSError as exc:
        raise fail(str(exc), EXIT_IO) from None


def _skip_hash_option() -> Any:
    return typer.Option(
        False,
        "--skip-hash-check",
        help="Accept an etcd database without the SHA-256 trailer (a db file copied from an etcd data dir).",
    )


def _write_out_option(choices: str) -> Any:
    return typer.Option("simple", "-w", "--write-out", help=f"Output: {choices}.", metavar=choices)


@app.command()
def status(
    file: Path = typer.Argument(..., help="The snapshot file (etcd's format or metastore's)."),
    write_out: str = _write_out_option("simple|json|table"),
    skip_hash_check: bool = _skip_hash_option(),
) -> None:
    """Print what `etcdctl snapshot status` prints: hash, revision, total keys, total size.

    For etcd's format the figures are etcdctl's exactly: CRC-32C over every bucket name, key and
    value; the newest revision in bucket "key"; the keys of all buckets; the database size. For
    metastore's: CRC-32C over every record's key and value, the snapshot's revision, its records,
    the size without the trailer. The whole file is checked first, as verify does.
    """
    check_write_out(write_out)
    st = _read(file, write_out, skip_hash_check, "status").status
    row = [f"{st.hash:x}", str(st.revision), str(st.total_keys), etcd_bytes(st.total_size)]
    if write_out == "json":
        doc = {
            "hash": st.hash,
            "revision": st.revision,
            "totalKey": st.total_keys,
            "totalSize": st.total_size,
        }
        typer.echo(dump_json(doc))
    elif write_out == "table":
        typer.echo(ascii_table(["hash", "revision", "total keys", "total size"], [row], align=">"))
    else:
        typer.echo(", ".join(row))


def etcd_bytes(n: int) -> str:
    """A size as etcdctl prints it (go-humanize Bytes: SI units, one decimal below 10)."""
    if n < 10:
        return f"{n} B"
    e = math.floor(math.log(n) / math.log(1000))
    value = math.floor(n / 1000**e * 10 + 0.5) / 10
    unit = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[e]
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


@app.command()
def verify(
    file: Path = typer.Argument(..., help="The snapshot file to check (etcd's format or metastore's)."),
    write_out: str = _write_out_option("simple|json"),
    skip_hash_check: bool = _skip_hash_option(),
) -> None:
    """Check a snapshot's whole structure, every record and the SHA-256 trailer (exit 0 when valid)."""
    check_write_out(write_out, ("simple", "json"))
    report = _read(file, write_out, skip_hash_check, "verify")
    d = report.details
    info = {"valid": True, "format": report.format, **d}
    if write_out == "json":
        typer.echo(json.dumps(info))
    elif report.format == snapfile.ETCD:
        typer.echo(
            f"{file}: valid etcd snapshot, revision {d['revision']}, compacted {d['compact_revision']}, "
            f"{d['records']} revision records, {d['leases']} leases, {d['users']} users, {d['roles']} roles, "
            f"{d['size']} bytes, sha256 {d['sha256'] or '(not checked)'}"
        )
    else:
        typer.echo(
            f"{file}: valid snapshot (format {d['format_version']}), revision {d['revision']}, "
            f"compacted {d['compact_revision']}, {d['records']} records, {d['size']} bytes, "
            f"sha256 {d['sha256']}"
        )


@app.command()
def restore(
    file: Path = typer.Argument(..., help="The snapshot file to restore (etcd's format or metastore's)."),
    data_dir: Path = typer.Option(
        ..., "--data-dir", help="New data dir to create (must be empty).", metavar="DIR"
    ),
    member_id: str = typer.Option(
        None,
        "--member-id",
        help="Member ID for the restored member, in hex [a new random one].",
        metavar="HEX",
    ),
    keep_member_id: bool = typer.Option(
        False, "--keep-member-id", help="Keep the member ID the snapshot was taken from."
    ),
    enable_crc: bool = typer.Option(
        False, "--enable-crc", help="etcd snapshots: store every record with a CRC32 (as serve --enable-crc)."
    ),
    skip_hash_check: bool = _skip_hash_option(),
) -> None:
    """Verify FILE while building a new data dir from it: keys with their history, revisions,
    compaction, leases with their keys and auth users and roles. Alarms and members are not
    restored: the result is a new member of a new cluster."""
    mid: int | None = None
    if member_id is not None and keep_member_id:
        raise typer.BadParameter("--member-id and --keep-member-id exclude each other")
    if member_id is not None:
        try:
            mid = int(member_id, 16)
        except ValueError:
            raise typer.BadParameter(f"{member_id!r}: want hex", param_hint="--member-id") from None
        if not 0 < mid < 1 << 64:
            raise typer.BadParameter(
                f"{member_id}: must be a non-zero 64-bit value", param_hint="--member-id"
            )
    try:
        with _progress("restore") as bar:
            opts = snapfile.RestoreOptions(mid, keep_member_id, enable_crc, skip_hash_check)
            r = snapfile.restore(file, data_dir, opts, bar)
    except S.SnapshotError as exc:
        raise _invalid(file, exc, "simple", "invalid snapshot, nothing restored") from None
    except (FileExistsError, ValueError) as exc:
        raise fail(str(exc), EXIT_ERROR) from None
    except Exception as exc:  # the storage layer raises its own errors; all end the same way here
        raise fail(f"restore failed: {exc}", EXIT_IO) from None
    d = r.report.details
    typer.echo(
        f"Restored {file} ({r.report.format} format) into {data_dir}: revision {d['revision']}, "
        f"compacted {d['compact_revision']}, member {r.member_id:x}, cluster {r.cluster_id:x}"
    )
