"""`metastore serve`: the daemon in the foreground.

Precedence: command-line flag, then METASTORE_* environment variable, then
the YAML config file, then the built-in default. (etcd gives its config
file precedence over flags; we follow our spec and say so in the man page.)
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
import yaml

from metastore_core.config import PRESETS, Config
from metastore_core.server.app import Server
from metastore_core.storage.base import StorageError
from metastore_core.storage.datadir import DataDirInUse


def _opt(default: Any, *names: str, help: str, env: str | None = None) -> Any:
    return typer.Option(default, *names, help=help, envvar=env, show_default=False)


def load_config(path: Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults < YAML file < env/flags (typer has already merged env into flags)."""
    values: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise typer.BadParameter(f"{path}: want a mapping of option names to values")
        known = {f.name for f in fields(Config)}
        for key, value in raw.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise typer.BadParameter(f"{path}: unknown option {key!r}")
            values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    preset = values.get("preset") or "default"
    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}: want {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **values}
    if "data_dir" in values:
        values["data_dir"] = Path(values["data_dir"])
    for name in ("listen_client_urls", "advertise_client_urls", "listen_metrics_urls"):
        if isinstance(values.get(name), str):
            values[name] = [u.strip() for u in values[name].split(",") if u.strip()]
    return Config(**values)


def serve(
    data_dir: Path = _opt(
        None, "--data-dir", help="Data directory [default.metastore].", env="METASTORE_DATA_DIR"
    ),
    name: str = _opt(None, "--name", help="Member name [default].", env="METASTORE_NAME"),
    backend: str = _opt(
        None, "--backend", help="Storage: leveldb (default) or memory.", env="METASTORE_BACKEND"
    ),
    listen_client_urls: str = _opt(
        None,
        "--listen-client-urls",
        help="Comma-separated URLs for gRPC clients [http://127.0.0.1:2379].",
        env="METASTORE_LISTEN_CLIENT_URLS",
    ),
    advertise_client_urls: str = _opt(
        None,
        "--advertise-client-urls",
        help="Client URLs told to clients in member lists [the listen URLs].",
        env="METASTORE_ADVERTISE_CLIENT_URLS",
    ),
    listen_metrics_urls: str = _opt(
        None,
        "--listen-metrics-urls",
        help="URLs for HTTP /metrics and /health [http://127.0.0.1:2381].",
        env="METASTORE_LISTEN_METRICS_URLS",
    ),
    max_txn_ops: int = _opt(
        None, "--max-txn-ops", help="Most operations in one txn [128].", env="METASTORE_MAX_TXN_OPS"
    ),
    max_request_bytes: int = _opt(
        None,
        "--max-request-bytes",
        help="Largest Put/Txn request accepted, in bytes [1572864].",
        env="METASTORE_MAX_REQUEST_BYTES",
    ),
    max_value_bytes: int = _opt(
        None, "--max-value-bytes", help="Largest value, in bytes [1048576].", env="METASTORE_MAX_VALUE_BYTES"
    ),
    quota_backend_bytes: int = _opt(
        None,
        "--quota-backend-bytes",
        help="Store size that raises the NOSPACE alarm [2147483648].",
        env="METASTORE_QUOTA_BACKEND_BYTES",
    ),
    auto_compaction_mode: str = _opt(
        None,
        "--auto-compaction-mode",
        help="periodic (keep a time window of history) or revision (keep N revisions) [periodic].",
        env="METASTORE_AUTO_COMPACTION_MODE",
    ),
    auto_compaction_retention: str = _opt(
        None,
        "--auto-compaction-retention",
        help="History to keep: a duration (1h, 30m; a bare number is hours) or revisions; 0 = off [0].",
        env="METASTORE_AUTO_COMPACTION_RETENTION",
    ),
    enable_crc: bool = _opt(
        None,
        "--enable-crc/--no-enable-crc",
        help="CRC32 on every stored record (new data dirs).",
        env="METASTORE_ENABLE_CRC",
    ),
    unsafe_no_fsync: bool = _opt(
        None,
        "--unsafe-no-fsync",
        help="Do not fsync writes (benchmarks only: a power loss can lose acknowledged writes).",
        env="METASTORE_UNSAFE_NO_FSYNC",
    ),
    shutdown_timeout: float = _opt(
        None,
        "--shutdown-timeout",
        help="Seconds a graceful stop may take [30].",
        env="METASTORE_SHUTDOWN_TIMEOUT",
    ),
    preset: str = _opt(
        None,
        "--preset",
        help="Limit set: default, high-load or safe (flags given explicitly win) [default].",
        env="METASTORE_PRESET",
    ),
    max_connections: int = _opt(
        None, "--max-connections", help="Client connections at once [10000].", env="METASTORE_MAX_CONNECTIONS"
    ),
    max_concurrent_requests: int = _opt(
        None,
        "--max-concurrent-requests",
        help="Unary calls in flight at once; streams are counted apart [5000].",
        env="METASTORE_MAX_CONCURRENT_REQUESTS",
    ),
    max_memory: int = _opt(
        None,
        "--max-memory",
        help="Resident memory cap in bytes; at the cap writes are refused [2147483648].",
        env="METASTORE_MAX_MEMORY",
    ),
    max_recv_bytes: int = _opt(
        None,
        "--max-recv-bytes",
        help="Largest gRPC message accepted, in bytes (RESOURCE_EXHAUSTED above) [4194304].",
        env="METASTORE_MAX_RECV_BYTES",
    ),
    request_timeout: float = _opt(
        None,
        "--request-timeout",
        help="Seconds a unary call may take; a shorter client deadline wins [30].",
        env="METASTORE_REQUEST_TIMEOUT",
    ),
    connection_timeout: float = _opt(
        None,
        "--connection-timeout",
        help="Seconds a new connection has to finish its handshake [10].",
        env="METASTORE_CONNECTION_TIMEOUT",
    ),
    memory_check_interval: float = _opt(
        None,
        "--memory-check-interval",
        help="Seconds between memory checks [10].",
        env="METASTORE_MEMORY_CHECK_INTERVAL",
    ),
    corrupt_check_on_start: bool = _opt(
        None,
        "--corrupt-check-on-start/--no-corrupt-check-on-start",
        help="Verify every stored record before serving; refuse to start on corruption.",
        env="METASTORE_CORRUPT_CHECK_ON_START",
    ),
    corrupt_check_interval: float = _opt(
        None,
        "--corrupt-check-interval",
        help="Seconds between background scrubs of every record; 0 = off [0].",
        env="METASTORE_CORRUPT_CHECK_INTERVAL",
    ),
    test_faults: bool = typer.Option(None, "--test-faults", hidden=True),
    watch_progress_notify_interval: float = _opt(
        None,
        "--watch-progress-notify-interval",
        help="Seconds between progress notifications to idle progress_notify watchers [600].",
        env="METASTORE_WATCH_PROGRESS_NOTIFY_INTERVAL",
    ),
    lease_checkpoint_interval: float = _opt(
        None,
        "--lease-checkpoint-interval",
        help="Seconds between checkpoints of lease remaining TTLs (restart keeps them) [5].",
        env="METASTORE_LEASE_CHECKPOINT_INTERVAL",
    ),
    event_loop: str = _opt(
        None,
        "--event-loop",
        help="uvloop (default; ~18 % less CPU per request than asyncio) or asyncio.",
        env="METASTORE_EVENT_LOOP",
    ),
    log_level: str = _opt(
        None, "--log-level", help="debug, info, warning or error [info].", env="METASTORE_LOG_LEVEL"
    ),
    config_file: Path = _opt(
        None, "--config-file", help="YAML file of options (flag names).", env="METASTORE_CONFIG_FILE"
    ),
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT."""
    overrides = {
        "data_dir": data_dir,
        "name": name,
        "backend": backend,
        "listen_client_urls": listen_client_urls,
        "advertise_client_urls": advertise_client_urls,
        "listen_metrics_urls": listen_metrics_urls,
        "max_txn_ops": max_txn_ops,
        "max_request_bytes": max_request_bytes,
        "max_value_bytes": max_value_bytes,
        "quota_backend_bytes": quota_backend_bytes,
        "auto_compaction_mode": auto_compaction_mode,
        "auto_compaction_retention": auto_compaction_retention,
        "enable_crc": enable_crc,
        "fsync": None if unsafe_no_fsync is None else not unsafe_no_fsync,
        "shutdown_timeout_s": shutdown_timeout,
        "preset": preset,
        "max_connections": max_connections,
        "max_concurrent_requests": max_concurrent_requests,
        "max_memory_bytes": max_memory,
        "max_recv_bytes": max_recv_bytes,
        "request_timeout_s": request_timeout,
        "connection_timeout_s": connection_timeout,
        "memory_check_interval_s": memory_check_interval,
        "corrupt_check_on_start": corrupt_check_on_start,
        "corrupt_check_interval_s": corrupt_check_interval,
        "test_faults": test_faults,
        "watch_progress_notify_interval_s": watch_progress_notify_interval,
        "lease_checkpoint_interval_s": lease_checkpoint_interval,
        "event_loop": event_loop,
        "log_level": log_level,
    }
    config = load_config(config_file, overrides)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.event_loop not in ("asyncio", "uvloop"):
        typer.echo(f"Error: --event-loop {config.event_loop!r}: want asyncio or uvloop", err=True)
        raise typer.Exit(1)
    try:
        if config.event_loop == "uvloop":
            import uvloop

            code = uvloop.run(_run(config))
        else:
            code = asyncio.run(_run(config))
    except (DataDirInUse, StorageError, OSError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    if code:
        raise typer.Exit(code)


async def _run(config: Config) -> int:
    """Serve until a signal, `metastore stop` or the Shutdown RPC; the exit code of the shutdown."""
    server = Server(config)
    await server.start()
    return await server.serve_until_stopped()
