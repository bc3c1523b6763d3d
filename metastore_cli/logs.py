"""One log pipeline for the daemon: our records and every library's, through stdlib logging.

`--log-format json` writes one JSON object per line with etcd's (zap's) keys: level, ts,
caller, msg, then the record's own fields (`log.info("...", extra={"phase": ...})`):

    {"level":"info","ts":"2026-12-03T17:12:50.872+0000","caller":"server/app.py:173",
     "logger":"metastore","msg":"serving","listen-client-urls":["http://127.0.0.1:2379"]}

`--log-format console` writes the same record as one line of text with key=value fields. The
handler sits on the root logger, so grpc's, asyncio's and warnings' records take the same path
(structlog would give the same over stdlib logging; plain logging needs no dependency, and we
log per event, never per request). grpc's C core writes its own lines to stderr, outside any
Python logger: GRPC_VERBOSITY (default ERROR) governs those.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import PurePath
from typing import Any, TextIO

from metastore_core.server.logline import LineFormatter, escape

# every attribute a plain LogRecord has: anything else on a record came in through extra=
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_LEVELS = {"WARNING": "warn", "CRITICAL": "fatal"}  # zap's names for the two that differ


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields (from extra=), in the order they were given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def caller(record: logging.LogRecord) -> str:
    """'server/app.py:173': the file's folder and name, as zap's short caller."""
    parts = PurePath(record.pathname).parts[-2:]
    return f"{'/'.join(parts)}:{record.lineno}"


def timestamp(created: float) -> str:
    """ISO 8601 with milliseconds and the UTC offset, as etcd's logs: 2026-12-03T17:12:50.872+0000."""
    t = time.localtime(created)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created * 1000) % 1000:03d}" + time.strftime("%z", t)
    )


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: level, ts, caller, logger, msg, fields, error and stacktrace."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": _LEVELS.get(record.levelname, record.levelname.lower()),
            "ts": timestamp(record.created),
            "caller": caller(record),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(fields(record))
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = repr(record.exc_info[1])
            out["stacktrace"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stacktrace"] = record.stack_info
        return json.dumps(out, default=str, separators=(",", ":"))


class ConsoleFormatter(LineFormatter):
    """A record as text: time, level, logger, message, then key=value fields (a dict field as an
    indented block, one item per line: the effective configuration). Every value is escaped as
    the message is (server/logline.py): no client text can begin a line of its own."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        blocks = []
        for key, value in fields(record).items():
            if isinstance(value, dict):
                blocks += [f"    {escape(str(k))} = {escape(_plain(v))}" for k, v in value.items()]
            else:
                text += f" {key}={escape(_plain(value))}"
        return "\n".join([text, *blocks]) if blocks else text


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records (ours, the libraries', warnings) to stream in one format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return handler
