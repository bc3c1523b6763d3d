"""Shared pieces of the operator commands (stop, health, stats): endpoints, dialing, printers.

The commands fetch; printers format (simple, json, table), as etcdctl's do.
JSON follows etcdctl's Go encoding: snake_case field names, integers as
numbers, zero fields left out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import grpc
import typer
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

WRITE_OUT = ("simple", "json", "table")

# etcdctl's exit codes (pkg/cobrautl/error.go)
EXIT_ERROR = 1
EXIT_BAD_CONNECTION = 2
EXIT_SERVER_ERROR = 4


def endpoints_option() -> Any:
    return typer.Option(
        "127.0.0.1:2379",
        "--endpoints",
        envvar="METASTORE_ENDPOINTS",
        help="Comma-separated gRPC endpoints (HOST:PORT or http://HOST:PORT).",
    )


def write_out_option() -> Any:
    return typer.Option(
        "simple", "-w", "--write-out", envvar="METASTORE_WRITE_OUT", help="Output: simple, json or table."
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


def check_write_out(value: str) -> str:
    if value not in WRITE_OUT:
        raise typer.BadParameter(f"{value!r}: want one of {', '.join(WRITE_OUT)}", param_hint="-w")
    return value


def dial(endpoint: str, timeout: float) -> grpc.Channel:
    """A ready channel, or grpc.FutureTimeoutError after timeout seconds."""
    ch = grpc.insecure_channel(endpoint)
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        ch.close()
        raise
    return ch


def fail(message: str, code: int) -> typer.Exit:
    """Print an etcdctl-style error to stderr; return the Exit to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def to_json_obj(msg: Message) -> dict[str, Any]:
    """A message as etcdctl's JSON would show it (Go encoding/json of the struct)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.is_repeated:
            out[field.name] = [_json_value(field, v) for v in value]
        else:
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json_obj(value)
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
