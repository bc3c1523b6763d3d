"""`metastore health`: probe a daemon with the gRPC health protocol, grpc_health_probe style.

Exit codes (as grpc_health_probe): 0 serving, 1 bad arguments, 2 connection
failed or timed out, 3 the RPC failed or timed out, 4 not serving. With
several endpoints, the worst code wins.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.core import TyperCommand

from metastore_cli.connect import Credentials, dial, with_credentials
from metastore_cli.ops import (
    ascii_table,
    check_write_out,
    dump_json,
    endpoints_option,
    parse_endpoints,
    write_out_option,
)

OK, BAD_ARGS, CONNECTION, RPC, NOT_SERVING = 0, 1, 2, 3, 4
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]  # UsageError of typer's bundled click
STATUS_NAMES = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


class ProbeCommand(TyperCommand):
    """Bad arguments exit 1 (click's default is 2, which here means a connection failure)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERROR as exc:
            exc.exit_code = BAD_ARGS  # type: ignore[attr-defined]
            raise


def probe(
    endpoint: str, service: str, connect_timeout: float, rpc_timeout: float, creds: Credentials | None = None
) -> dict[str, Any]:
    """One endpoint's result: endpoint, code, status, took, error (health needs no user)."""
    result: dict[str, Any] = {"endpoint": endpoint, "service": service}
    t0 = time.monotonic()
    try:
        ch = dial(endpoint, creds or Credentials(), connect_timeout).channel
    except grpc.FutureTimeoutError:
        result.update(code=CONNECTION, error=f"failed to connect to {endpoint} within {connect_timeout:g}s")
        return result
    try:
        t1 = time.monotonic()
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=rpc_timeout
        )
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            err = f"timeout: health rpc did not complete within {rpc_timeout:g}s"
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            err = "this server does not implement the grpc health protocol"
        elif code == grpc.StatusCode.NOT_FOUND:
            err = f"unknown service {service!r}"
        else:
            err = f"health rpc failed: {code.name}: {exc.details()}"
        result.update(code=RPC, error=err)
        return result
    finally:
        ch.close()
    status = STATUS_NAMES.get(resp.status, str(resp.status))
    result.update(
        status=status,
        took=f"{(time.monotonic() - t1) * 1000:.3f}ms",
        total=f"{(time.monotonic() - t0) * 1000:.3f}ms",
    )
    result["code"] = OK if resp.status == health_pb2.HealthCheckResponse.SERVING else NOT_SERVING
    if result["code"] != OK:
        result["error"] = f"service unhealthy (responded with {status})"
    return result


@with_credentials(auth=False)
def health(
    endpoints: str = endpoints_option(),
    service: str = typer.Option("", "--service", help='Service name to check ["" = the whole server].'),
    connect_timeout: float = typer.Option(
        2.0, "--connect-timeout", "--dial-timeout", help="Seconds to connect [2]."
    ),
    rpc_timeout: float = typer.Option(
        5.0, "--rpc-timeout", "--command-timeout", help="Seconds for the Check RPC [5]."
    ),
    write_out: str = write_out_option(),
    creds: Credentials = Credentials(),
) -> None:
    """Probe gRPC health: exit 0 serving, 1 bad args, 2 no connection, 3 RPC failed, 4 not serving."""
    try:
        check_write_out(write_out)
        eps = parse_endpoints(endpoints)
        if connect_timeout <= 0 or rpc_timeout <= 0:
            raise typer.BadParameter("timeouts must be > 0")
    except typer.BadParameter as exc:
        typer.echo(f"Error: {exc.format_message()}", err=True)
        raise typer.Exit(BAD_ARGS) from None
    results = [probe(ep, service, connect_timeout, rpc_timeout, creds) for ep in eps]
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
