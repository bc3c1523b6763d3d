"""`metastore snapshot save|verify|restore`: take, check and restore snapshots.

`save` is online (one Maintenance/Snapshot stream from one endpoint); `verify` and `restore`
work on files, offline, like etcd 3.6's split between etcdctl and etcdutl. On a terminal each
shows a progress bar on stderr. Files are created 0600, as etcdctl does: a snapshot holds every
key and value.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
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
    check_positive,
    check_write_out,
    dial_timeout_option,
    endpoints_option,
    fail,
    interrupt_event,
)
from metastore_core.config import host_port
from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from metastore_core.storage import snapshot as S
from metastore_core.storage.datadir import fsync_dir

app = typer.Typer(
    name="snapshot",
    help="Save a snapshot from a running daemon, verify a snapshot file, restore a data dir from one.",
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


@app.command()
@with_credentials()
def save(
    file: Path = typer.Argument(..., help="Where to write the snapshot."),
    endpoints: str = endpoints_option("The one endpoint to ask (HOST:PORT, http:// or https://HOST:PORT)."),
    dial_timeout: float = dial_timeout_option(5.0),
    creds: Credentials = Credentials(),
) -> None:
    """Stream a consistent snapshot from a daemon to FILE (via FILE.part, fsynced, then renamed)."""
    endpoint = _one_endpoint(endpoints)
    check_positive(dial_timeout=dial_timeout)
    part = file.with_name(file.name + ".part")
    calls: list[Any] = []  # the stream, for Ctrl-C to cancel (a KeyboardInterrupt inside grpc can be lost)
    with interrupt_event(lambda: [c.cancel() for c in calls]) as stop:
        try:
            _save(endpoint, creds, dial_timeout, part, calls)
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
    """Stream the snapshot into part (0600, fsynced), then check it whole."""
    try:
        conn = dial(endpoint, creds, dial_timeout, [("grpc.max_receive_message_length", 1 << 30)])
    except grpc.FutureTimeoutError:
        raise fail(f"cannot connect to {endpoint}", EXIT_UNREACHABLE) from None
    except grpc.RpcError as exc:  # --user given and Authenticate refused
        raise fail(str(exc.details()), EXIT_SERVER_ERROR) from None
    with conn.channel as ch:
        digest = hashlib.sha256()
        received = 0
        last = b""  # the newest message is held back: the final one is the SHA-256 trailer
        progress: _Progress | None = None
        try:
            with _create_private(part) as out:
                stub = rpc_pb2_grpc.MaintenanceStub(ch)
                calls.append(stub.Snapshot(rpc_pb2.SnapshotRequest(), metadata=conn.metadata))
                for msg in calls[0]:
                    if progress is None:
                        total = len(msg.blob) + msg.remaining_bytes + S.TRAILER
                        progress = _Progress.on_terminal("save", total)
                    digest.update(last)
                    out.write(msg.blob)
                    received += len(msg.blob)
                    last = msg.blob
                    progress.update(received)
                out.flush()
                os.fsync(out.fileno())
        finally:
            if progress is not None:
                progress.close()
    if received % S.BLOCK != S.TRAILER or last != digest.digest():
        raise fail(f"sha256 checksum not found [bytes: {received}]", EXIT_UNHEALTHY)
    with open(part, "rb") as f:
        S.verify(f)


def _create_private(path: Path) -> BinaryIO:
    """path opened for writing, created (or truncated) with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    os.fchmod(fd, PRIVATE)  # an older file of that name may have had wider permissions
    return os.fdopen(fd, "wb")


class _Progress:
    """A rich progress bar on stderr while it is a terminal; otherwise it shows nothing."""

    def __init__(self, description: str, total: int, shown: bool) -> None:
        self._p: Any = None
        if not shown:
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self._p = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._p.start()
        self._task = self._p.add_task(description, total=total)

    @classmethod
    def on_terminal(cls, description: str, total: int) -> _Progress:
        return cls(description, total, sys.stderr.isatty())

    def update(self, done: int) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


class _Tracked:
    """A file read through which moves a progress bar (verify and restore read files this way)."""

    def __init__(self, f: BinaryIO, progress: _Progress, base: int = 0) -> None:
        self._f, self._progress, self._base = f, progress, base

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._progress.update(self._base + self._f.tell())
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def __enter__(self) -> _Tracked:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _tracked_opener(progress: _Progress, size: int) -> Callable[[Path], Any]:
    """An opener for S.restore: its first pass (verify) fills the bar's first half, the second
    (the writes) the rest."""
    passes = [0]

    def opener(path: Path) -> _Tracked:
        base = size * passes[0]
        passes[0] += 1
        return _Tracked(open(path, "rb"), progress, base)

    return opener


@app.command()
def verify(
    file: Path = typer.Argument(..., help="The snapshot file to check."),
    write_out: str = typer.Option(
        "simple", "-w", "--write-out", help="simple or json.", metavar="simple|json"
    ),
) -> None:
    """Check a snapshot's structure, every record CRC and the SHA-256 trailer (exit 0 when valid)."""
    check_write_out(write_out, ("simple", "json"))
    progress: _Progress | None = None
    try:
        with open(file, "rb") as f:
            progress = _Progress.on_terminal("verify", os.fstat(f.fileno()).st_size)
            summary = S.verify(_Tracked(f, progress))  # type: ignore[arg-type]
    except S.SnapshotError as exc:
        if write_out == "json":
            typer.echo(json.dumps({"valid": False, "error": exc.reason, "offset": exc.offset}))
        raise fail(f"{file}: invalid snapshot: {exc}", EXIT_INVALID_INPUT) from None
    except OSError as exc:
        raise fail(str(exc), EXIT_IO) from None
    finally:
        if progress is not None:
            progress.close()
    h = summary.header
    info = {
        "valid": True,
        "format_version": h.version,
        "revision": h.revision,
        "compact_revision": h.compact_revision,
        "cluster_id": f"{h.cluster_id:x}",
        "member_id": f"{h.member_id:x}",
        "records": summary.records,
        "size": summary.size,
        "sha256": summary.sha256,
    }
    if write_out == "json":
        typer.echo(json.dumps(info))
    else:
        typer.echo(
            f"{file}: valid snapshot (format {h.version}), revision {h.revision}, "
            f"compacted {h.compact_revision}, {summary.records} records, {summary.size} bytes, "
            f"sha256 {summary.sha256}"
        )


@app.command()
def restore(
    file: Path = typer.Argument(..., help="The snapshot file to restore."),
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
) -> None:
    """Verify FILE, then build a new data dir from it (keys, revisions, compaction, leases)."""
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
    progress: _Progress | None = None
    try:
        if keep_member_id:
            with open(file, "rb") as f:
                mid = S.verify(f).header.member_id
        progress = _Progress.on_terminal("restore", 2 * file.stat().st_size)
        h = S.restore(file, data_dir, member_id=mid, opener=_tracked_opener(progress, file.stat().st_size))
    except S.SnapshotError as exc:
        raise fail(f"{file}: invalid snapshot, nothing restored: {exc}", EXIT_INVALID_INPUT) from None
    except FileExistsError as exc:
        raise fail(str(exc), EXIT_ERROR) from None
    except Exception as exc:  # the storage layer raises its own errors; all end the same way here
        raise fail(f"restore failed: {exc}", EXIT_IO) from None
    finally:
        if progress is not None:
            progress.close()
    typer.echo(
        f"Restored {file} into {data_dir}: revision {h.revision}, compacted {h.compact_revision}, "
        f"member {h.member_id:x}, cluster {h.cluster_id:x}"
    )
