"""`metastore stop`: ask a daemon for a graceful shutdown and wait until it is gone."""

from __future__ import annotations

import getpass
import os
import socket
import time

import grpc
import typer

from metastore_cli.connect import Credentials, dial, with_credentials
from metastore_cli.ops import (
    EXIT_ERROR,
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    check_positive,
    dial_timeout_option,
    endpoints_option,
    parse_endpoints,
)
from metastore_core.pb.metastore.admin.v1 import admin_pb2, admin_pb2_grpc

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")  # a zombie has finished; only its parent has not reaped it
    except (OSError, IndexError):
        return False


def _refusing(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return False
    except OSError:
        return True


def _wait_gone(endpoint: str, pid: int, deadline: float) -> bool:
    """Local daemon: until its process is gone. Remote: until its port refuses connections."""
    local = endpoint.rsplit(":", 1)[0] in LOCAL_HOSTS and pid > 0 and os.path.exists(f"/proc/{pid}")
    while time.monotonic() < deadline:
        if (not _pid_alive(pid)) if local else _refusing(endpoint):
            return True
        time.sleep(0.05)
    return False


@with_credentials()
def stop(
    endpoints: str = endpoints_option(),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the daemon to be gone [60]."),
    dial_timeout: float = dial_timeout_option(),
    reason: str = typer.Option("", "--reason", help="Logged by the daemon with the shutdown."),
    creds: Credentials = Credentials(),
) -> None:
    """Ask the daemon for a graceful shutdown and wait until it has exited (root once auth is on)."""
    eps = parse_endpoints(endpoints)
    check_positive(timeout=timeout, dial_timeout=dial_timeout)
    why = reason or f"metastore stop by {getpass.getuser()}@{socket.gethostname()}"
    worst = 0
    for ep in eps:
        t0 = time.monotonic()
        try:
            conn = dial(ep, creds, dial_timeout)
        except grpc.FutureTimeoutError:
            typer.echo(f"Error: cannot connect to {ep} within {dial_timeout:g}s", err=True)
            worst = max(worst, EXIT_UNREACHABLE)
            continue
        except grpc.RpcError as exc:
            typer.echo(f"Error: {ep}: {exc.details()}", err=True)
            worst = max(worst, EXIT_SERVER_ERROR)
            continue
        try:
            resp = admin_pb2_grpc.AdminStub(conn.channel).Shutdown(
                admin_pb2.ShutdownRequest(reason=why), timeout=10, metadata=conn.metadata
            )
        except grpc.RpcError as exc:
            typer.echo(f"Error: {ep} refused the shutdown: {exc.code().name}: {exc.details()}", err=True)
            worst = max(worst, EXIT_SERVER_ERROR)
            continue
        finally:
            conn.close()
        if not resp.accepted:
            typer.echo(f"{ep} (pid {resp.pid}) is already shutting down; waiting")
        if _wait_gone(ep, resp.pid, t0 + timeout):
            typer.echo(f"{ep} (pid {resp.pid}) stopped in {time.monotonic() - t0:.2f}s")
        else:
            typer.echo(
                f"Error: {ep} (pid {resp.pid}) still running after {timeout:g}s "
                "(in-flight requests or a slow disk; see its log; a second SIGTERM forces exit)",
                err=True,
            )
            worst = max(worst, EXIT_ERROR)
    if worst:
        raise typer.Exit(worst)
