"""`metastore stats`: the daemon's live figures (limits, counters, storage, watch, lease)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from metastore_cli.connect import Credentials, dial, with_credentials
from metastore_cli.ops import (
    EXIT_SERVER_ERROR,
    EXIT_UNREACHABLE,
    check_positive,
    check_write_out,
    command_timeout_option,
    dial_timeout_option,
    dump_json,
    endpoints_option,
    fail,
    interrupt_event,
    parse_endpoints,
    to_json_obj,
    write_out_option,
)
from metastore_core.pb.metastore.admin.v1 import admin_pb2, admin_pb2_grpc


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if h or d else "") + f"{m}m{s}s"


def _pct(used: int, cap: int) -> str:
    return f" ({100 * used / cap:.1f}%)" if cap else ""


def rows(s: admin_pb2.GetStatsResponse) -> list[tuple[str, str, str]]:
    """(section, figure, value) for the human printers."""
    alarms = ", ".join(s.alarms) or "none"
    health = "SERVING" if s.serving else "NOT_SERVING: " + "; ".join(s.health_reasons)
    out = [
        ("daemon", "version", f"{s.version} (etcd API {s.etcd_api_version})"),
        ("daemon", "member id", f"{s.member_id:x}"),
        ("daemon", "pid", str(s.pid)),
        ("daemon", "uptime", human_duration(s.uptime_seconds)),
        ("daemon", "health", health),
        ("daemon", "alarms", alarms),
        *[("daemon", "WARNING", w) for w in s.warnings],
        ("limits", "connections", f"{s.connections_current} / {s.connections_max}"),
        (
            "limits",
            "connections refused",
            f"{s.connections_refused} calls, {s.connections_closed_idle} closed idle before the handshake",
        ),
        ("limits", "requests in flight", f"{s.requests_current} / {s.requests_max} (peak {s.requests_peak})"),
        ("limits", "requests refused", str(s.requests_refused)),
        ("limits", "open streams", str(s.active_streams)),
        (
            "limits",
            "per client",
            f"{s.client_requests_max or 'no'} in flight, "
            + (f"{s.client_rate:g}/s" if s.client_rate else "no rate limit")
            + f"; {s.clients} clients, refused {s.client_refused_in_flight} in flight "
            f"+ {s.client_refused_rate} rate",
        ),
        *(
            (
                "limits",
                f"client {c.client}",
                f"{c.in_flight} in flight, {c.requests} calls, {c.refused} refused",
            )
            for c in s.busiest_clients
        ),
        (
            "limits",
            "event loop lag",
            f"{s.loop_lag_seconds * 1000:.1f} ms (peak {s.loop_lag_peak_seconds * 1000:.1f})",
        ),
        (
            "limits",
            "memory",
            f"{human_bytes(s.memory_used_bytes)} / {human_bytes(s.memory_max_bytes)}"
            + _pct(s.memory_used_bytes, s.memory_max_bytes),
        ),
        ("errors", "panics recovered", str(s.panic_count)),
        ("errors", "validation errors", str(s.validation_error_count)),
        ("storage", "backend", s.backend),
        ("storage", "revision", str(s.revision)),
        ("storage", "compact revision", str(s.compact_revision)),
        ("storage", "keys", str(s.key_count)),
        ("storage", "db size", human_bytes(s.db_size_bytes)),
        ("watch/lease", "watchers", f"{s.watchers} on {s.watch_streams} streams, {s.slow_watchers} behind"),
        ("watch/lease", "leases", str(s.leases)),
    ]
    if s.last_shutdown:
        total = sum(p.seconds for p in s.last_shutdown)
        out.append(("last shutdown", "reason", s.last_shutdown_reason or "-"))
        for p in s.last_shutdown:
            out.append(
                (
                    "last shutdown",
                    p.phase,
                    f"{p.seconds * 1000:.1f} ms" + (f"  ERROR {p.error}" if p.error else ""),
                )
            )
        out.append(("last shutdown", "total", f"{total * 1000:.1f} ms"))
    return out


def rich_table(endpoint: str, s: admin_pb2.GetStatsResponse) -> Table:
    table = Table(title=f"metastore {endpoint}", title_justify="left")
    table.add_column("section", style="dim")
    table.add_column("figure")
    table.add_column("value", justify="right")
    last = None
    for section, figure, value in rows(s):
        style = None
        if (figure == "health" and not s.serving) or (figure == "alarms" and s.alarms) or figure == "WARNING":
            style = "bold red"
        table.add_row(section if section != last else "", figure, value, style=style)
        last = section
    return table


def fetch(
    endpoint: str, creds: Credentials, dial_timeout: float, command_timeout: float
) -> admin_pb2.GetStatsResponse:
    conn = dial(endpoint, creds, dial_timeout)
    try:
        stub = admin_pb2_grpc.AdminStub(conn.channel)
        return stub.GetStats(admin_pb2.GetStatsRequest(), timeout=command_timeout, metadata=conn.metadata)
    finally:
        conn.close()


def _refresh(stop: threading.Event, interval: float, show: Callable[[], None]) -> None:
    while not stop.is_set():
        show()
        stop.wait(interval)


@with_credentials()
def stats(
    endpoints: str = endpoints_option(),
    write_out: str = write_out_option(),
    watch: bool = typer.Option(
        False, "--watch", help="Refresh until Ctrl-C (with -w json: one JSON line per refresh)."
    ),
    interval: float = typer.Option(
        2.0, "-i", "--interval", help="Seconds between refreshes with --watch [2]."
    ),
    dial_timeout: float = dial_timeout_option(),
    command_timeout: float = command_timeout_option(),
    creds: Credentials = Credentials(),
) -> None:
    """Show limits, panic and validation error counts, storage, watch and lease figures."""
    check_write_out(write_out)
    eps = parse_endpoints(endpoints)
    check_positive(interval=interval, dial_timeout=dial_timeout, command_timeout=command_timeout)

    def get_all() -> list[tuple[str, admin_pb2.GetStatsResponse]]:
        out = []
        for ep in eps:
            try:
                out.append((ep, fetch(ep, creds, dial_timeout, command_timeout)))
            except grpc.FutureTimeoutError:
                raise fail(f"cannot connect to {ep} within {dial_timeout:g}s", EXIT_UNREACHABLE) from None
            except grpc.RpcError as exc:
                raise fail(f"{ep}: {exc.code().name}: {exc.details()}", EXIT_SERVER_ERROR) from None
        return out

    def as_json() -> str:
        # every figure, zeros included: scripts read them by name
        objs: list[dict[str, Any]] = [{"endpoint": ep, **to_json_obj(s, zeros=True)} for ep, s in get_all()]
        return dump_json(objs if len(objs) > 1 else objs[0])

    if watch and write_out == "json":
        with interrupt_event() as stop:
            _refresh(stop, interval, lambda: typer.echo(as_json()))
        return
    if watch:
        with interrupt_event() as stop, Live(console=Console(), auto_refresh=False) as live:
            _refresh(
                stop,
                interval,
                lambda: live.update(Group(*(rich_table(ep, s) for ep, s in get_all())), refresh=True),
            )
        return
    if write_out == "json":
        typer.echo(as_json())
        return
    results = get_all()
    if write_out == "table":
        console = Console()
        for ep, s in results:
            console.print(rich_table(ep, s))
    else:
        for ep, s in results:
            if len(results) > 1:
                typer.echo(f"[{ep}]")
            for _, figure, value in rows(s):
                typer.echo(f"{figure}: {value}")
