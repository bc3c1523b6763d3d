"""`metastore health`: probe a daemon with the gRPC health protocol, grpc_health_probe style.

The whole server ("" service) is healthy when it answers SERVING and no alarm is active, the
rule of the metrics port's /health (`--exclude NOSPACE` ignores that alarm, as `?exclude=` does
there). Exit codes are the CLI's own (ops.EXIT_CODES): 0 healthy, 2 bad usage, 4 the RPC
failed, 5 not serving or an alarm is active, 7 no connection. With several endpoints, the
worst code wins.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metastore_cli.connect import Credentials, dial, with_credentials
from metastore_cli.ops import (
    EXIT_SERVER_ERROR,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    ascii_table,
    check_positive,
    check_write_out,
    dump_json,
    endpoints_option,
    parse_endpoints,
    write_out_option,
)
from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

OK = 0
STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


def _rpc_error(exc: grpc.RpcError, what: str, timeout: float, service: str) -> str:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"timeout: {what} did not complete within {timeout:g}s"
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"this server does not implement {what}"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"unknown service {service!r}"
    return f"{what} failed: {code.name}: {exc.details()}"


def _alarms(ch: grpc.Channel, timeout: float, metadata: list[tuple[str, str]]) -> list[str] | None:
    """Active alarms by name (NOSPACE, CORRUPT), each once; None when auth is on and the caller
    gave no user that may list them (the gRPC status alone is reported then)."""
    try:
        resp = rpc_pb2_grpc.MaintenanceStub(ch).Alarm(
            rpc_pb2.AlarmRequest(action=rpc_pb2.AlarmRequest.GET), timeout=timeout, metadata=metadata
        )
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
            return None  # "user name is empty" / "permission denied"
        raise
    return sorted({rpc_pb2.AlarmType.Name(a.alarm) for a in resp.alarms})


def probe(
    endpoint: str,
    service: str,
    connect_timeout: float,
    rpc_timeout: float,
    exclude: set[str],
    creds: Credentials | None = None,
) -> dict[str, Any]:
    """One endpoint's result: endpoint, service, code, status, alarms, took, error."""
    result: dict[str, Any] = {"endpoint": endpoint, "service": service}
    try:
        conn = dial(endpoint, creds or Credentials(), connect_timeout)
    except grpc.FutureTimeoutError:
        result.update(
            code=EXIT_UNREACHABLE, error=f"failed to connect to {endpoint} within {connect_timeout:g}s"
        )
        return result
    except grpc.RpcError as exc:  # --user given and Authenticate refused
        result.update(code=EXIT_SERVER_ERROR, error=f"authentication failed: {exc.details()}")
        return result
    ch = conn.channel
    what = "health rpc"
    try:
        t0 = time.monotonic()
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=rpc_timeout
        )
        took = time.monotonic() - t0  # the call alone: closing the channel below is not the server's
        what = "alarm list"
        alarms = _alarms(ch, rpc_timeout, conn.metadata) if service == "" else []
    except grpc.RpcError as exc:
        result.update(code=EXIT_SERVER_ERROR, error=_rpc_error(exc, what, rpc_timeout, service))
        return result
    finally:
        ch.close()
    status = STATUS_NAMES.get(resp.status, str(resp.status))
    active = [a for a in alarms or () if a not in exclude]
    result.update(status=status, alarms=alarms, took=f"{took * 1000:.3f}ms")
    if alarms is None:
        result["note"] = "alarms not checked: auth is on (give --user to list them)"
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        result.update(code=EXIT_UNHEALTHY, error=f"service unhealthy (responded with {status})")
    elif active:
        result.update(code=EXIT_UNHEALTHY, error=f"active alarm(s): {', '.join(active)}")
    else:
        result["code"] = OK
    return result


@with_credentials()  # --user: with auth on, listing the alarms needs a user
def health(
    endpoints: str = endpoints_option(),
    service: str = typer.Option(
        "", "--service", help='Service name to check ["" = the whole server].', metavar="NAME"
    ),
    exclude: str = typer.Option(
        "",
        "--exclude",
        help="Comma-separated alarms to ignore (NOSPACE), as /health?exclude= does.",
        metavar="ALARM[,...]",
    ),
    connect_timeout: float = typer.Option(
        2.0,
        "--connect-timeout",
        "--dial-timeout",
        envvar=["METASTORE_DIAL_TIMEOUT", "ETCDCTL_DIAL_TIMEOUT"],
        help="Seconds to connect [2].",
    ),
    rpc_timeout: float = typer.Option(
        5.0,
        "--rpc-timeout",
        "--command-timeout",
        envvar=["METASTORE_COMMAND_TIMEOUT", "ETCDCTL_COMMAND_TIMEOUT"],
        help="Seconds for each RPC [5].",
    ),
    write_out: str = write_out_option(),
    creds: Credentials = Credentials(),
) -> None:
    """Probe a daemon: exit 0 when it is serving and no alarm is active."""
    check_write_out(write_out)
    eps = parse_endpoints(endpoints)
    check_positive(connect_timeout=connect_timeout, rpc_timeout=rpc_timeout)
    skip = {name.strip().upper() for name in exclude.split(",") if name.strip()}
    results = [probe(ep, service, connect_timeout, rpc_timeout, skip, creds) for ep in eps]
    if write_out == "json":
        typer.echo(dump_json(results if len(results) > 1 else results[0]))
    elif write_out == "table":
        rows = [
            [r["endpoint"], r.get("status", "-"), r.get("took", "-"), r.get("error", "")] for r in results
        ]
        typer.echo(ascii_table(["endpoint", "status", "took", "error"], rows))
    else:
        for r in results:
            if r["code"] == OK:
                typer.echo(f"{r['endpoint']} is SERVING (service {service!r}): took = {r['took']}")
            else:
                typer.echo(f"{r['endpoint']} is unhealthy: {r['error']}", err=True)
    code = max(r["code"] for r in results)
    if code:
        raise typer.Exit(code)
