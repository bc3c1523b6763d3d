"""Shared pieces of the operator commands (stop, health, stats): endpoints, printers (dialing is
connect.py's).

The commands fetch; printers format (simple, json, table), as etcdctl's do.
JSON follows etcdctl's Go encoding: snake_case field names, integers as
numbers, zero fields left out.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

WRITE_OUT = ("simple", "json", "table")

# Exit codes, the same for every subcommand. etcdctl's (pkg/cobrautl/error.go) where they fit;
# a usage mistake is 2 as with click and argparse, so "no connection" (etcdctl's 2) is 7.
EXIT_ERROR = 1  # the command failed
EXIT_USAGE = 2  # a bad flag, argument, option value or config file
EXIT_INVALID_INPUT = 3  # a file is not what it should be (a damaged snapshot)
EXIT_SERVER_ERROR = 4  # the daemon answered with an error
EXIT_UNHEALTHY = 5  # not serving, an alarm is active, or a stream broke off (etcdctl's 5)
EXIT_IO = 6  # a local file could not be read or written
EXIT_UNREACHABLE = 7  # no connection within --dial-timeout
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_CODES = (
    (0, "success"),
    (EXIT_ERROR, "the command failed"),
    (EXIT_USAGE, "bad usage: an unknown flag, a bad argument, option value or config file"),
    (EXIT_INVALID_INPUT, "invalid input: the file is not a valid snapshot"),
    (EXIT_SERVER_ERROR, "the daemon answered with an error"),
    (EXIT_UNHEALTHY, "unhealthy: not serving or an alarm is active; or the stream broke off"),
    (EXIT_IO, "a local file could not be read or written"),
    (EXIT_UNREACHABLE, "no connection to the endpoint within the dial timeout"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


def endpoints_option(
    help: str = "Comma-separated gRPC endpoints (HOST:PORT, http://HOST:PORT or https://HOST:PORT).",
) -> Any:
    # etcdctl's variable too, so an environment set up for etcdctl works unchanged
    return typer.Option(
        "127.0.0.1:2379",
        "--endpoints",
        envvar=["METASTORE_ENDPOINTS", "ETCDCTL_ENDPOINTS"],
        help=help,
        metavar="HOST:PORT[,...]",
    )


def _timeout_option(name: str, default: float, what: str) -> Any:
    # METASTORE_DIAL_TIMEOUT, then etcdctl's ETCDCTL_DIAL_TIMEOUT
    env = name.upper().replace("-", "_")
    return typer.Option(
        default,
        f"--{name}",
        envvar=[f"METASTORE_{env}", f"ETCDCTL_{env}"],
        help=f"Seconds {what} [{default:g}].",
    )


def dial_timeout_option(default: float = 2.0) -> Any:
    return _timeout_option("dial-timeout", default, "to connect")


def command_timeout_option(default: float = 5.0) -> Any:
    return _timeout_option("command-timeout", default, "for the RPC")


def write_out_option(choices: Sequence[str] = WRITE_OUT) -> Any:
    return typer.Option(
        "simple",
        "-w",
        "--write-out",
        envvar="METASTORE_WRITE_OUT",
        help=f"Output: {', '.join(choices[:-1])} or {choices[-1]}.",
        metavar="|".join(choices),
    )


def parse_endpoints(raw: str) -> list[str]:
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        for prefix in ("http://", "https://"):
            if item.startswith(prefix):
                item = item[len(prefix) :]
        out.append(item.rstrip("/"))
    if not out:
        raise typer.BadParameter("no endpoint given", param_hint="--endpoints")
    return out


def check_write_out(value: str, choices: Sequence[str] = WRITE_OUT) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r}: want one of {', '.join(choices)}", param_hint="-w")
    return value


def check_positive(**timeouts: float) -> None:
    """A usage error (exit 2) for a timeout that is not above 0."""
    for name, value in timeouts.items():
        if value <= 0:
            raise typer.BadParameter(
                f"{value:g}: must be more than 0", param_hint="--" + name.replace("_", "-")
            )


def fail(message: str, code: int) -> typer.Exit:
    """Print an etcdctl-style error to stderr; return the Exit to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def to_json_obj(msg: Message, *, zeros: bool = False) -> dict[str, Any]:
    """A message as etcdctl's JSON would show it (Go encoding/json of the struct).

    zeros=True keeps fields at their zero value too, for output that scripts read by name
    (`metastore stats -w json | jq .panic_count` must print 0, not null).
    """
    out: dict[str, Any] = {}
    pairs = [(f, getattr(msg, f.name)) for f in msg.DESCRIPTOR.fields] if zeros else msg.ListFields()
    for field, value in pairs:
        if field.is_repeated:
            out[field.name] = [_json_value(field, v, zeros) for v in value]
        else:
            out[field.name] = _json_value(field, value, zeros)
    return out


def _json_value(field: FieldDescriptor, value: Any, zeros: bool) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json_obj(value, zeros=zeros)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


def dump_json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def ascii_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "<") -> str:
    """An ASCII table with borders, like etcdctl's tablewriter output (align ">": ALIGN_RIGHT)."""
    cols = [str(h).upper() for h in header]
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(cols[i]), *(len(r[i]) for r in cells)) if cells else len(cols[i]) for i in range(len(cols))
    ]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str], align: str) -> str:
        return "|" + "|".join(f" {v:{align}{w}} " for v, w in zip(values, widths, strict=True)) + "|"

    return "\n".join([sep, line(cols, "^"), sep, *(line(r, align) for r in cells), sep])


@contextmanager
def interrupt_event(on_interrupt: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """An Event set by the first SIGINT/SIGTERM (then on_interrupt runs); a second one exits (130).

    Long commands wait on this instead of catching KeyboardInterrupt: that exception is raised
    wherever the main thread happens to be, and inside grpc's own callbacks it is printed as
    "ignored" and lost, which left `stats --watch` running after Ctrl-C (about 1 in 225 tries).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(EXIT_INTERRUPTED)
        stop.set()
        if on_interrupt is not None:
            on_interrupt()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
