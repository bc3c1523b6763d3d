"""Daemon configuration: one dataclass, filled by the CLI from flags, env and YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from metastore_core.engine.validate import Limits


@dataclass
class Config:
    """Everything `metastore serve` can set (etcd's names where the meaning is the same)."""

    data_dir: Path = Path("default.metastore")
    name: str = "default"
    backend: str = "leveldb"  # leveldb | memory
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_client_urls: list[str] = field(default_factory=list)
    listen_metrics_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2381"])
    max_txn_ops: int = 128
    max_request_bytes: int = 1536 * 1024
    max_key_bytes: int = 1536
    max_value_bytes: int = 1 << 20
    quota_backend_bytes: int = 2 << 30
    # etcd's auto-compaction: periodic (retention a duration, bare number = hours) or revision
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"  # "0" = off
    enable_crc: bool = False
    fsync: bool = True  # off only for throwaway benchmarks: acknowledged writes may be lost on power loss
    # gRPC transport
    max_recv_bytes: int = 4 << 20  # the transport's hard message limit (RESOURCE_EXHAUSTED above)
    max_connections: int = 10_000
    connection_timeout_s: float = 10.0
    shutdown_timeout_s: float = 30.0
    # Reliability layer (spec §4; presets in server/limits.py PRESETS)
    preset: str = "default"  # default | high-load | safe: base values the other options override
    max_concurrent_requests: int = 5_000  # unary calls in flight; streams are counted apart
    max_memory_bytes: int = 2 << 30  # at the cap writes are refused, reads go on
    request_timeout_s: float = 30.0  # a shorter client deadline wins
    memory_check_interval_s: float = 10.0
    health_check_interval_s: float = 1.0
    corrupt_check_on_start: bool = False  # scrub every record before serving
    corrupt_check_interval_s: float = 0.0  # periodic scrub; 0 = off
    test_faults: bool = False  # hidden; also needs METASTORE_TEST_FAULTS=1 (server/faults.py)
    # Watch: etcd sends progress notifications every 10 minutes; the two bounds are
    # engine/watch.py's slow-consumer policy (per-watcher buffer, victim lag limit).
    watch_progress_notify_interval_s: float = 600.0
    watch_buffer_events: int = 1024
    watch_max_lag_revisions: int = 100_000
    # Lease: how often remaining TTLs are checkpointed (bounds the extra life after a crash).
    lease_checkpoint_interval_s: float = 5.0
    event_loop: str = "uvloop"  # uvloop | asyncio (uvloop: ~18 % less CPU per request, benchmarks/)
    log_level: str = "info"

    @property
    def limits(self) -> Limits:
        return Limits(
            max_txn_ops=self.max_txn_ops,
            max_key_bytes=self.max_key_bytes,
            max_value_bytes=self.max_value_bytes,
            max_request_bytes=self.max_request_bytes,
        )

    @property
    def client_urls(self) -> list[str]:
        """What clients are told to dial (advertised, else listened)."""
        return self.advertise_client_urls or self.listen_client_urls


def host_port(url: str) -> str:
    """'http://127.0.0.1:2379' or '127.0.0.1:2379' -> '127.0.0.1:2379'."""
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.port is None:
        raise ValueError(f"bad URL {url!r}: want http://HOST:PORT")
    host = parsed.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parsed.port}"


GiB = 1 << 30
MiB = 1 << 20

# Config field values of each preset (spec §4.7); explicit flags override them.
PRESETS: dict[str, dict[str, object]] = {
    "default": {
        "max_connections": 10_000,
        "max_concurrent_requests": 5_000,
        "max_memory_bytes": 2 * GiB,
        "max_recv_bytes": 4 * MiB,
        "request_timeout_s": 30.0,
        "connection_timeout_s": 10.0,
        "shutdown_timeout_s": 30.0,
    },
    "high-load": {
        "max_connections": 50_000,
        "max_concurrent_requests": 20_000,
        "max_memory_bytes": 8 * GiB,
        "max_recv_bytes": 8 * MiB,
        "request_timeout_s": 60.0,
        "connection_timeout_s": 30.0,
        "shutdown_timeout_s": 60.0,
    },
    "safe": {
        "max_connections": 5_000,
        "max_concurrent_requests": 2_000,
        "max_memory_bytes": 1 * GiB,
        "max_recv_bytes": 1 * MiB,
        "request_timeout_s": 10.0,
        "connection_timeout_s": 5.0,
        "shutdown_timeout_s": 30.0,
        "enable_crc": True,
    },
}
