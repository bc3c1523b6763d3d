"""`metastore snapshot save|verify|restore`: take, check and restore snapshots.

`save` is online (one Maintenance/Snapshot stream from one endpoint); `verify` and `restore`
work on files, offline, like etcd 3.6's split between etcdctl and etcdutl.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import grpc
import typer

from metastore_cli.connect import Credentials, dial, with_credentials
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

EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_INVALID = 3  # the file is not a valid snapshot
EXIT_INTERRUPTED = 5  # the stream broke (etcdctl's code for a failed snapshot save)
EXIT_IO = 6


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _one_endpoint(endpoints: str) -> str:
    eps = [e.strip() for e in endpoints.split(",") if e.strip()]
    if len(eps) != 1:
        raise _fail(f"snapshot must be requested to one selected node, not {len(eps)}", EXIT_ERROR)
    try:
        return host_port(eps[0])
    except ValueError as exc:
        raise _fail(str(exc), EXIT_ERROR) from None


@app.command()
@with_credentials()
def save(
    file: Path = typer.Argument(..., help="Where to write the snapshot."),
    endpoints: str = typer.Option(
        "127.0.0.1:2379", "--endpoints", envvar="METASTORE_ENDPOINTS", help="The one endpoint to ask."
    ),
    dial_timeout: float = typer.Option(
        5.0, "--dial-timeout", envvar="METASTORE_DIAL_TIMEOUT", help="Seconds to wait for a connection."
    ),
    creds: Credentials = Credentials(),
) -> None:
    """Stream a consistent snapshot from a daemon to FILE (via FILE.part, fsynced, then renamed)."""
    endpoint = _one_endpoint(endpoints)
    part = file.with_name(file.name + ".part")
    progress = None
    try:
        try:
            conn = dial(endpoint, creds, dial_timeout, [("grpc.max_receive_message_length", 1 << 30)])
        except grpc.FutureTimeoutError:
            raise _fail(f"cannot connect to {endpoint}", EXIT_BAD_CONNECTION) from None
        except grpc.RpcError as exc:
            raise _fail(str(exc.details()), EXIT_BAD_CONNECTION) from None
        with conn.channel:
            stub = rpc_pb2_grpc.MaintenanceStub(conn.channel)
            digest = hashlib.sha256()
            received = 0
            last = b""  # the newest message is held back: the final one is the SHA-256 trailer
            with open(part, "wb") as out:
                for msg in stub.Snapshot(rpc_pb2.SnapshotRequest(), metadata=conn.metadata):
                    if progress is None and sys.stderr.isatty():
                        progress = _Progress(received + len(msg.blob) + msg.remaining_bytes + S.TRAILER)
                    digest.update(last)
                    out.write(msg.blob)
                    received += len(msg.blob)
                    last = msg.blob
                    if progress is not None:
                        progress.update(received)
                out.flush()
                os.fsync(out.fileno())
            if progress is not None:
                progress.close()
                progress = None
            if received % S.BLOCK != S.TRAILER or last != digest.digest():
                raise _fail(f"sha256 checksum not found [bytes: {received}]", EXIT_INTERRUPTED)
        with open(part, "rb") as f:
            S.verify(f)
        os.replace(part, file)
        fsync_dir(file.resolve().parent)
    except grpc.RpcError as exc:
        part.unlink(missing_ok=True)
        raise _fail(f"snapshot stream failed: {exc.details() or exc.code().name}", EXIT_INTERRUPTED) from None
    except S.SnapshotError as exc:
        part.unlink(missing_ok=True)
        raise _fail(f"the received snapshot is invalid: {exc}", EXIT_INVALID) from None
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise _fail(str(exc), EXIT_IO) from None
    except typer.Exit:
        part.unlink(missing_ok=True)
        raise
    finally:
        if progress is not None:
            progress.close()
    typer.echo(f"Snapshot saved at {file}")


class _Progress:
    """A rich progress bar on stderr, shown only on a terminal."""

    def __init__(self, total: int) -> None:
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
        self._task = self._p.add_task("snapshot", total=total)

    def update(self, done: int) -> None:
        self._p.update(self._task, completed=done)

    def close(self) -> None:
        self._p.stop()


@app.command()
def verify(
    file: Path = typer.Argument(..., help="The snapshot file to check."),
    write_out: str = typer.Option("simple", "-w", "--write-out", help="simple or json."),
) -> None:
    """Check a snapshot's structure, every record CRC and the SHA-256 trailer (exit 0 when valid)."""
    try:
        with open(file, "rb") as f:
            summary = S.verify(f)
    except S.SnapshotError as exc:
        if write_out == "json":
            typer.echo(json.dumps({"valid": False, "error": exc.reason, "offset": exc.offset}))
        raise _fail(f"{file}: invalid snapshot: {exc}", EXIT_INVALID) from None
    except OSError as exc:
        raise _fail(str(exc), EXIT_IO) from None
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
    data_dir: Path = typer.Option(..., "--data-dir", help="New data dir to create (must be empty)."),
    member_id: str = typer.Option(
        None, "--member-id", help="Member ID for the restored member, in hex [a new random one]."
    ),
    keep_member_id: bool = typer.Option(
        False, "--keep-member-id", help="Keep the member ID the snapshot was taken from."
    ),
) -> None:
    """Verify FILE, then build a new data dir from it (keys, revisions, compaction, leases)."""
    mid: int | None = None
    if member_id is not None and keep_member_id:
        raise _fail("--member-id and --keep-member-id exclude each other", EXIT_ERROR)
    if member_id is not None:
        try:
            mid = int(member_id, 16)
        except ValueError:
            raise _fail(f"bad --member-id {member_id!r}: want hex", EXIT_ERROR) from None
        if not 0 < mid < 1 << 64:
            raise _fail("--member-id must be a non-zero 64-bit value", EXIT_ERROR)
    try:
        if keep_member_id:
            with open(file, "rb") as f:
                mid = S.verify(f).header.member_id
        h = S.restore(file, data_dir, member_id=mid)
    except S.SnapshotError as exc:
        raise _fail(f"{file}: invalid snapshot, nothing restored: {exc}", EXIT_INVALID) from None
    except FileExistsError as exc:
        raise _fail(str(exc), EXIT_ERROR) from None
    except Exception as exc:  # the storage layer raises its own errors; all end the same way here
        raise _fail(f"restore failed: {exc}", EXIT_IO) from None
    typer.echo(
        f"Restored {file} into {data_dir}: revision {h.revision}, compacted {h.compact_revision}, "
        f"member {h.member_id:x}, cluster {h.cluster_id:x}"
    )
