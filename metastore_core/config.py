"""Daemon configuration, declared once: every Config field carries its `Setting`.

A setting's flag (`--max-memory`) names everything else: its env var is METASTORE_MAX_MEMORY,
its YAML key `max-memory` (or `max_memory`). `load_config` fills a Config from flags, env, a
YAML file, the preset and the defaults, in that order, and runs every check once, here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlparse

import yaml

from metastore_core.engine.autocompact import make_policy
from metastore_core.engine.validate import Limits
from metastore_core.setting import (
    ENV_PREFIX,
    ConfigError,
    Rule,
    Setting,
    at_least,
    declare,
    more_than,
    one_of,
    show,
)
from metastore_core.tokenspec import parse_options

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG_FILE"
# Spec §4.7. The "default" preset is the declared defaults; the others are in each Setting.
PRESET_NAMES = ("default", "high-load", "safe")

# Groups of options, in the order `metastore serve --help` and the man page show them.
STORAGE = "Member and storage"
NETWORK = "Network"
REQUESTS = "Request limits"
RELIABILITY = "Reliability"
WATCH_LEASE = "Watch and lease"
COMPACTION = "Compaction"
SECURITY = "Auth and TLS"
PROCESS = "Process"
TRACING = "Tracing"
GROUPS = (STORAGE, NETWORK, SECURITY, REQUESTS, RELIABILITY, WATCH_LEASE, COMPACTION, PROCESS, TRACING)
SAMPLES_PER_MILLION = 1_000_000


def is_https(url: str) -> bool:
    """Does a listen URL ask for TLS?"""
    return url.strip().lower().startswith("https://")


def split_url(url: str) -> tuple[str, int]:
    """'http://HOST:PORT', 'https://HOST:PORT' or 'HOST:PORT' -> (HOST, PORT); other schemes are refused."""
    parsed = urlparse(url if "://" in url else "http://" + url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"{parsed.scheme}:// is not supported; use http:// or https://")
    try:
        port = parsed.port
    except ValueError:  # not a number, or out of range
        port = None
    if not parsed.hostname or port is None or parsed.path not in ("", "/") or parsed.query:
        raise ValueError("want http://HOST:PORT or https://HOST:PORT")
    return parsed.hostname, port


def _url_problem(url: str) -> str | None:
    try:
        split_url(url)
    except ValueError as exc:
        return str(exc)
    return None


HTTP_URL = Rule("each http(s)://HOST:PORT", _url_problem)


def _token_problem(spec: str) -> str | None:
    try:
        parse_options(spec)
    except ValueError as exc:
        return str(exc)
    return None


def host_port(url: str) -> str:
    """'http://127.0.0.1:2379' or '127.0.0.1:2379' -> '127.0.0.1:2379'."""
    try:
        host, port = split_url(url)
    except ValueError as exc:
        raise ValueError(f"bad URL {url!r}: {exc}") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Config:
    """Everything `metastore serve` can set (etcd's names where the meaning is the same)."""

    data_dir: Path = declare(
        Path("default.metastore"),
        Setting(
            "data-dir",
            STORAGE,
            "Data directory, created with mode 0700.",
            metavar="DIR",
            more="One daemon per directory: a second one exits at once naming the holder's PID. "
            "An existing directory must be empty or a metastore data dir (it holds "
            "metastore.datadir); it is used as it is, never chmod'ed, and its store (db/) is "
            "created 0700. A data dir whose store is missing is refused and left untouched.",
        ),
    )
    name: str = declare("default", Setting("name", STORAGE, "Member name, shown by etcdctl member list."))
    backend: str = declare(
        "leveldb",
        Setting(
            "backend",
            STORAGE,
            "Storage backend; memory keeps nothing across restarts (tests).",
            check=one_of("leveldb", "memory"),
        ),
    )
    listen_client_urls: list[str] = declare(
        ["http://127.0.0.1:2379"],
        Setting(
            "listen-client-urls",
            NETWORK,
            "Comma-separated addresses for gRPC clients.",
            check=HTTP_URL,
            more="https:// URLs serve TLS with --cert-file/--key-file or --auto-tls.",
        ),
    )
    listen_client_http_urls: list[str] = declare(
        [],
        Setting(
            "listen-client-http-urls",
            NETWORK,
            "Comma-separated addresses for HTTP clients: etcd's JSON gateway, /version, /health.",
            check=HTTP_URL,
            more="etcd 3.5's flag. The gateway serves /v3/... (and /v3beta/...) as etcd's does, "
            "through the same limits, auth and recovery as gRPC; https:// URLs serve the client "
            "certificate set.",
        ),
    )
    gateway_on_client_urls: bool = declare(
        False,
        Setting(
            "gateway-on-client-urls",
            NETWORK,
            "Also serve the JSON gateway on the http:// client URLs (one port, as etcd's cmux).",
            more="A front listener reads each connection's first bytes and relays gRPC ones to the "
            "gRPC server over a private socket; it costs gRPC calls CPU (README, 'JSON gateway').",
        ),
    )
    advertise_client_urls: list[str] = declare(
        [],
        Setting(
            "advertise-client-urls",
            NETWORK,
            "Client URLs reported in member lists; none means the listen URLs.",
            check=HTTP_URL,
        ),
    )
    listen_admin_urls: list[str] = declare(
        [],
        Setting(
            "listen-admin-urls",
            NETWORK,
            "gRPC addresses serving only health checks and the admin service; none by default.",
            check=HTTP_URL,
            more="Their own listener with its own connections (at most 64), so gRPC health probes "
            "and metastore health, stats and stop reach the daemon even while its client port "
            "is flooded with sockets; bind it where only operators and probes reach it.",
        ),
    )
    listen_metrics_urls: list[str] = declare(
        ["http://127.0.0.1:2381"],
        Setting(
            "listen-metrics-urls",
            NETWORK,
            "HTTP addresses for /metrics and /health.",
            check=HTTP_URL,
            more="https:// URLs serve the client certificate set (as etcd's metrics URLs do).",
        ),
    )
    auth_token: str = declare(
        "simple",
        Setting(
            "auth-token",
            SECURITY,
            "Token type: simple, or jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m (as etcd).",
            check=Rule("simple or jwt,pub-key=PATH[,priv-key=PATH,sign-method=M,ttl=D]", _token_problem),
            metavar="SPEC",
            more="Simple tokens live in this member only and expire after --auth-token-ttl without "
            "use; JWT tokens are signed (RS*, PS*, ES*, EdDSA) and expire at their exp claim. Tokens "
            "are never logged nor stored.",
        ),
    )
    cert_file: str = declare(
        "",
        Setting(
            "cert-file",
            SECURITY,
            "Server certificate (PEM) for https:// client and metrics URLs.",
            metavar="PATH",
            more="Re-read, with --key-file and --trusted-ca-file, on SIGHUP and when the files change; "
            "TLS 1.2 is the minimum and only forward-secret AEAD ciphers are offered.",
        ),
    )
    key_file: str = declare("", Setting("key-file", SECURITY, "Key of --cert-file (PEM).", metavar="PATH"))
    trusted_ca_file: str = declare(
        "",
        Setting(
            "trusted-ca-file", SECURITY, "CA bundle that client certificates must chain to.", metavar="PATH"
        ),
    )
    client_cert_auth: bool = declare(
        False,
        Setting(
            "client-cert-auth",
            SECURITY,
            "Require a client certificate signed by --trusted-ca-file (mutual TLS).",
            more="With auth on, a request without a token is made as the user named by the "
            "certificate's CN, as etcd does.",
        ),
    )
    auto_tls: bool = declare(
        False,
        Setting(
            "auto-tls",
            SECURITY,
            "Serve https:// URLs with a self-signed certificate made at first start.",
            more="Kept in DATA-DIR/fixtures/client (a temporary directory with --backend memory). "
            "Encrypts but proves nothing: clients must skip verification.",
        ),
    )
    auth_token_ttl_s: int = declare(
        300,
        Setting("auth-token-ttl", SECURITY, "Seconds a simple token lives without use.", check=at_least(1)),
    )
    bcrypt_cost: int = declare(
        10,
        Setting(
            "bcrypt-cost",
            SECURITY,
            "bcrypt cost of stored password hashes (4-31; each step doubles the work).",
            check=Rule("between 4 and 31", lambda v: None if 4 <= v <= 31 else "must be between 4 and 31"),
        ),
    )
    max_txn_ops: int = declare(
        128,
        Setting(
            "max-txn-ops",
            REQUESTS,
            "Most compares, or operations per branch, in one txn.",
            check=at_least(1),
            more="Nested txns count toward the level holding them (a nested txn is one operation "
            "plus its own), so the branch path that runs holds at most this many; etcd counts "
            "each level alone.",
        ),
    )
    max_request_bytes: int = declare(
        1536 * 1024,
        Setting(
            "max-request-bytes",
            REQUESTS,
            "Largest Put or Txn request, in bytes.",
            check=at_least(KiB),
            metavar="BYTES",
            more='Larger ones get INVALID_ARGUMENT "etcdserver: request is too large".',
        ),
    )
    max_response_bytes: int = declare(
        1024 * MiB,
        Setting(
            "max-response-bytes",
            REQUESTS,
            "Largest reply (a Range or a Txn's reads), in bytes.",
            check=at_least(64 * KiB),
            metavar="BYTES",
            more='A read that would build more gets RESOURCE_EXHAUSTED "etcdserver: response is too '
            'large" as soon as it passes the limit (etcd refuses replies over its 2 GiB gRPC send '
            "limit); page with limit, or ask for keys_only or count_only. Big reads are built in "
            "steps that let other requests run between them. A reply takes about twice its size in "
            "memory while it is sent (a Range over a million 256-byte values: ~280 MiB, ~590 MiB), "
            "so the default, half of etcd's limit, keeps one reply within the default --max-memory.",
        ),
    )
    max_key_bytes: int = declare(
        1536, Setting("max-key-bytes", REQUESTS, "Largest key, in bytes.", check=at_least(1), metavar="BYTES")
    )
    max_value_bytes: int = declare(
        1 << 20,
        Setting("max-value-bytes", REQUESTS, "Largest value, in bytes.", check=at_least(1), metavar="BYTES"),
    )
    quota_backend_bytes: int = declare(
        2 << 30,
        Setting(
            "quota-backend-bytes",
            STORAGE,
            "Store size that raises the NOSPACE alarm; 0 means the default, negative turns it off.",
            metavar="BYTES",
            more='Past it, Put, a Txn with a put and LeaseGrant fail with "etcdserver: mvcc: database '
            'space exceeded" until etcdctl alarm disarm; reads, deletes and compaction go on.',
        ),
    )
    value_cache_bytes: int = declare(
        -1,
        Setting(
            "value-cache-bytes",
            STORAGE,
            "Bytes of newest values held in memory; -1 holds every one, 0 none.",
            check=at_least(-1),
            metavar="BYTES",
            more="A read of a value not held goes to LevelDB (block cache, then disk) and holds it, "
            "dropping values not read for longest. With --enable-crc no value is held.",
        ),
    )
    # etcd's auto-compaction: periodic (retention a duration, bare number = hours) or revision
    auto_compaction_mode: str = declare(
        "periodic",
        Setting(
            "auto-compaction-mode",
            COMPACTION,
            "How --auto-compaction-retention is read, as etcd.",
            check=one_of("periodic", "revision"),
        ),
    )
    auto_compaction_retention: str = declare(
        "0",
        Setting(
            "auto-compaction-retention",
            COMPACTION,
            "History to keep, 0 = off: a duration (1h, 30m; a bare number is hours) or revisions.",
            metavar="VALUE",
            more="Periodic: the revision is sampled every tenth of min(VALUE, 1h) and every "
            "min(VALUE, 1h) the store is compacted to the revision from VALUE ago. Revision: every "
            "5 minutes the store is compacted to the current revision minus VALUE. Compaction runs "
            "in the background in small steps, so requests are not held up.",
        ),
    )
    enable_crc: bool = declare(
        False,
        Setting(
            "enable-crc",
            STORAGE,
            "CRC32 on every stored record, checked on every read (new data dirs).",
            presets={"safe": True},
            more="Recorded in the data dir's format header when it is created; an existing data "
            "dir keeps what it was created with.",
        ),
    )
    fsync: bool = declare(
        True,
        Setting(
            "unsafe-no-fsync",
            STORAGE,
            "Do not fsync writes: for benchmarks, a power loss can lose acknowledged writes.",
            inverted=True,
        ),
    )
    grpc_reflection: bool = declare(
        True,
        Setting(
            "grpc-reflection",
            NETWORK,
            "Serve gRPC server reflection on the client port, so grpcurl can list and call the services.",
            more="It describes the services (etcd's, health, admin); it answers no data and takes no "
            "credentials, as with kine. --no-grpc-reflection turns it off.",
        ),
    )
    unsafe_accept_lost_writes: bool = declare(
        False,
        Setting(
            "unsafe-accept-lost-writes",
            STORAGE,
            "Start even when the store came back older than its last acknowledged write.",
            more="A repair switch for one start, not for a config file: without it the daemon refuses "
            "a store behind its watermark (<data-dir>/metastore.watermark; a truncated or deleted "
            "write-ahead log) or a missing or damaged watermark. With it, the store starts at the "
            "revision it has, the loss is logged, and a new watermark is written.",
        ),
    )
    snapshot_format: str = declare(
        "etcd",
        Setting(
            "snapshot-format",
            STORAGE,
            "Format of the Maintenance/Snapshot stream: etcd (a bbolt database) or metastore.",
            check=one_of("etcd", "metastore"),
            more="etcd's is what etcd itself sends: etcdctl snapshot status and restore, and an etcd "
            "started on the result, take it. metastore snapshot status, verify and restore take both.",
        ),
    )
    # gRPC transport
    max_recv_bytes: int = declare(
        4 << 20,
        Setting(
            "max-recv-bytes",
            NETWORK,
            "Largest gRPC message accepted, in bytes; the transport refuses larger ones.",
            check=at_least(64 * KiB),
            presets={"high-load": 8 * MiB, "safe": 1 * MiB},
            metavar="BYTES",
            more="The refusal is RESOURCE_EXHAUSTED.",
        ),
    )
    max_connections: int = declare(
        10_000,
        Setting(
            "max-connections",
            NETWORK,
            "Client connections at once; calls on connections past it are refused.",
            check=at_least(1),
            presets={"high-load": 50_000, "safe": 5_000},
            more="Past it a new connection's calls get RESOURCE_EXHAUSTED naming this flag, "
            "while health checks and the admin service still answer on a reserve of 1 % more "
            "connections (at least 32); past that reserve grpc closes new connections at "
            "accept. Under pressure, connections that have not sent the HTTP/2 preface within "
            "a second are closed (long before --connection-timeout).",
        ),
    )
    connection_timeout_s: float = declare(
        10.0,
        Setting(
            "connection-timeout",
            NETWORK,
            "Seconds a new connection has to finish its HTTP/2 handshake.",
            check=more_than(0),
            presets={"high-load": 30.0, "safe": 5.0},
        ),
    )
    shutdown_timeout_s: float = declare(
        30.0,
        Setting(
            "shutdown-timeout",
            RELIABILITY,
            "Seconds a graceful stop may take before the rest is forced.",
            check=more_than(0),
            presets={"high-load": 60.0, "safe": 30.0},
        ),
    )
    # Reliability layer (spec §4)
    preset: str = declare(
        "default",
        Setting(
            "preset",
            RELIABILITY,
            "Base values for the options that list preset values; options given explicitly win.",
            check=one_of(*PRESET_NAMES),
            more="The default preset is the defaults; the options it changes list their high-load "
            "and safe values.",
        ),
    )
    max_concurrent_requests: int = declare(
        5_000,
        Setting(
            "max-concurrent-requests",
            RELIABILITY,
            "Unary calls in flight at once; streams are counted apart.",
            check=at_least(1),
            presets={"high-load": 20_000, "safe": 2_000},
            more="Above it a call is refused at once with RESOURCE_EXHAUSTED naming the limit. "
            "Streams (watch, keep-alive) never take these slots; health and the admin service are "
            "not limited.",
        ),
    )
    max_client_requests: int = declare(
        2_500,
        Setting(
            "max-client-requests",
            RELIABILITY,
            "Unary calls in flight at once from one client; 0 = no per-client cap.",
            check=at_least(0),
            presets={"high-load": 10_000, "safe": 1_000},
            more="A client is its host (every connection from one address), or its user once "
            "auth is on. Past the cap its next call is refused at once with RESOURCE_EXHAUSTED "
            "naming this flag, and other clients go on: by default one client may take half of "
            "--max-concurrent-requests, never all of it.",
        ),
    )
    client_rate: float = declare(
        0.0,
        Setting(
            "client-rate",
            RELIABILITY,
            "Calls a second one client may make (a token bucket); 0 = no rate limit.",
            check=at_least(0),
            more="Every call and stream opened takes a token; an empty bucket refuses with "
            "RESOURCE_EXHAUSTED naming this flag. Health and the admin service are not limited.",
        ),
    )
    client_burst: int = declare(
        0,
        Setting(
            "client-burst",
            RELIABILITY,
            "Tokens a client's bucket holds (calls it may make at once); 0 = one second's worth.",
            check=at_least(0),
        ),
    )
    max_memory_bytes: int = declare(
        2 << 30,
        Setting(
            "max-memory",
            RELIABILITY,
            "Resident memory cap in bytes; at the cap writes are refused and reads go on.",
            check=at_least(MiB),
            presets={"high-load": 8 * GiB, "safe": 1 * GiB},
            metavar="BYTES",
            more="Above 80 % garbage is collected, above 90 % a warning is logged; writes are "
            "refused with RESOURCE_EXHAUSTED until memory falls.",
        ),
    )
    request_timeout_s: float = declare(
        30.0,
        Setting(
            "request-timeout",
            RELIABILITY,
            "Seconds a unary call may run; a shorter client deadline wins.",
            check=more_than(0),
            presets={"high-load": 60.0, "safe": 10.0},
            more='A call past it gets DEADLINE_EXCEEDED "etcdserver: request timed out".',
        ),
    )
    memory_check_interval_s: float = declare(
        10.0,
        Setting("memory-check-interval", RELIABILITY, "Seconds between memory checks.", check=more_than(0)),
    )
    health_check_interval_s: float = declare(
        1.0,
        Setting(
            "health-check-interval",
            RELIABILITY,
            "Seconds between runs of the health checkers.",
            check=more_than(0),
        ),
    )
    corrupt_check_on_start: bool = declare(
        False,
        Setting(
            "corrupt-check-on-start",
            RELIABILITY,
            "Verify every stored record before serving; refuse to start on corruption.",
            more="It reads every record, verifying LevelDB block checksums, the CRC of every record "
            "(with --enable-crc) and that each record agrees with its revision key.",
        ),
    )
    corrupt_check_interval_s: float = declare(
        0.0,
        Setting(
            "corrupt-check-interval",
            RELIABILITY,
            "Seconds between background scrubs of every record; 0 = off.",
            check=at_least(0),
            more='A mismatch raises the CORRUPT alarm and refuses writes (DATA_LOSS "etcdserver: '
            'corrupt cluster").',
        ),
    )
    # hidden, and no env var: server/faults.py also wants METASTORE_TEST_FAULTS=1, so the
    # variable alone must not turn the flag on
    test_faults: bool = declare(
        False,
        Setting("test-faults", RELIABILITY, "Register the fault-injection service (tests).", hidden=True),
    )
    # Watch: etcd sends progress notifications every 10 minutes; the two bounds are
    # engine/watch.py's slow-consumer policy (per-watcher buffer, victim lag limit).
    watch_progress_notify_interval_s: float = declare(
        600.0,
        Setting(
            "watch-progress-notify-interval",
            WATCH_LEASE,
            "Seconds between progress notifications to idle progress_notify watchers.",
            check=more_than(0),
        ),
    )
    watch_buffer_events: int = declare(
        1024,
        Setting(
            "watch-buffer-events",
            WATCH_LEASE,
            "Live events one watcher buffers before it falls behind and replays from the store.",
            check=at_least(1),
        ),
    )
    watch_max_lag_revisions: int = declare(
        100_000,
        Setting(
            "watch-max-lag-revisions",
            WATCH_LEASE,
            "Revisions a watcher may fall behind before it is cancelled (it can resume).",
            check=at_least(1),
        ),
    )
    # Lease: how often remaining TTLs are checkpointed (bounds the extra life after a crash).
    lease_checkpoint_interval_s: float = declare(
        5.0,
        Setting(
            "lease-checkpoint-interval",
            WATCH_LEASE,
            "Seconds between checkpoints of leases' remaining TTLs (a restart keeps them).",
            check=more_than(0),
        ),
    )
    event_loop: str = declare(
        "uvloop",
        Setting(
            "event-loop",
            PROCESS,
            "Event loop; uvloop measured about 18 % less CPU per request than asyncio.",
            check=one_of("uvloop", "asyncio"),
        ),
    )
    log_level: str = declare(
        "info", Setting("log-level", PROCESS, "Log level.", check=one_of("debug", "info", "warning", "error"))
    )
    log_format: str = declare(
        "console",
        Setting(
            "log-format",
            PROCESS,
            "Log lines as text (console) or one JSON object each (json, with etcd's keys).",
            check=one_of("console", "json"),
            more="JSON lines carry level, ts, caller, logger and msg, then the event's own fields, as "
            "etcd's zap logs do. The libraries' records (grpc, asyncio) take the same path.",
        ),
    )

    # OpenTelemetry, spelled as etcd 3.5's flags (embed/config_tracing.go); server/tracing.py
    experimental_enable_distributed_tracing: bool = declare(
        False,
        Setting(
            "experimental-enable-distributed-tracing",
            TRACING,
            "Send OpenTelemetry spans (every RPC, every batch commit) to an OTLP collector.",
            more="Needs the tracing extra (pip install 'metastore[tracing]'). Off, it costs nothing: "
            "no layer is added and nothing is imported. Incoming W3C traceparent metadata is honoured.",
        ),
    )
    experimental_distributed_tracing_address: str = declare(
        "localhost:4317",
        Setting(
            "experimental-distributed-tracing-address",
            TRACING,
            "OTLP gRPC collector address (plaintext).",
            metavar="HOST:PORT",
        ),
    )
    experimental_distributed_tracing_service_name: str = declare(
        "metastore",
        Setting(
            "experimental-distributed-tracing-service-name",
            TRACING,
            "service.name of the spans; use one name for all members (etcd's default is etcd).",
        ),
    )
    experimental_distributed_tracing_instance_id: str = declare(
        "",
        Setting(
            "experimental-distributed-tracing-instance-id",
            TRACING,
            "service.instance.id of the spans, unique per member; none by default.",
        ),
    )
    experimental_distributed_tracing_sampling_rate: int = declare(
        0,
        Setting(
            "experimental-distributed-tracing-sampling-rate",
            TRACING,
            "Spans sampled per million root spans; requests whose caller sampled them are always traced.",
            check=Rule(
                "from 0 to 1000000",
                lambda v: None if 0 <= v <= SAMPLES_PER_MILLION else "must be from 0 to 1000000",
            ),
            metavar="PER_MILLION",
            more="As etcd: 0 samples no root span of our own (only those a traced caller asks for).",
        ),
    )

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


def _declared() -> tuple[Setting, ...]:
    """Each Config field's Setting, completed with the field's name, type and default."""
    hints, defaults = get_type_hints(Config), Config()
    settings = []
    for f in fields(Config):
        s: Setting = f.metadata["setting"]
        default = getattr(defaults, f.name)
        settings.append(
            dataclasses.replace(s, attr=f.name, kind=hints[f.name], default=s.attr_value(default))
        )
    return tuple(settings)


SETTINGS = _declared()
BY_FLAG = {s.flag: s for s in SETTINGS}
_BY_ATTR = {s.attr: s.flag for s in SETTINGS}


# ---------------------------------------------------------------------- loading
def load_config(
    yaml_path: Path | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Config:
    """Flags (overrides, by flag name; None = not given) > env > YAML > preset > default.

    Raises ConfigError, one line naming the option, the value and where it came from.
    """
    return load_config_traced(yaml_path, overrides, env)[0]


def load_config_traced(
    yaml_path: Path | None, overrides: Mapping[str, Any], env: Mapping[str, str] | None = None
) -> tuple[Config, dict[str, str]]:
    """load_config, and where each option's value came from, by flag: 'flag', 'env
    METASTORE_MAX_MEMORY', 'file /etc/metastore.yaml', 'preset safe' or 'default'."""
    given = _from_yaml(yaml_path) if yaml_path is not None else {}
    given.update(_from_env(os.environ if env is None else env))
    for key, raw in overrides.items():
        if raw is not None:
            given[_lookup(key, "flags").flag] = (raw, "")
    preset = _value(BY_FLAG["preset"], given, "default")
    values = {s.flag: preset if s.flag == "preset" else _value(s, given, preset) for s in SETTINGS}
    _check_together(values, given)
    config = Config(**{s.attr: s.attr_value(values[s.flag]) for s in SETTINGS})
    return config, {s.flag: _source(s, given, preset, yaml_path) for s in SETTINGS}


def _source(s: Setting, given: Given, preset: str, yaml_path: Path | None) -> str:
    if s.flag in given:
        origin = given[s.flag][1]
        if not origin:
            return "flag"
        return f"env {origin}" if origin == s.env else f"file {yaml_path}"
    return f"preset {preset}" if preset in s.presets else "default"


MASK = "******"


def effective(
    config: Config, sources: Mapping[str, str], settings: tuple[Setting, ...] = SETTINGS
) -> dict[str, str]:
    """What start-up logs: 'value (source)' per option, by flag; a secret shows only whether it is set."""
    out = {}
    for s in settings:
        if s.hidden and sources.get(s.flag, "default") == "default":
            continue
        value = s.attr_value(getattr(config, s.attr))
        shown = (MASK if value else "(unset)") if s.secret else show(value)
        out[s.option] = f"{shown} ({sources.get(s.flag, 'default')})"
    return out


Given = dict[str, tuple[Any, str]]  # flag -> (raw value, where it came from; "" = a flag)


def _located(exc: ConfigError, origin: str) -> ConfigError:
    return ConfigError(f"{exc} (from {origin})") if origin else exc


def _value(s: Setting, given: Given, preset: str) -> Any:
    raw, origin = given.get(s.flag, (s.presets.get(preset, s.default), ""))
    try:
        return s.coerce(raw)
    except ConfigError as exc:
        raise _located(exc, origin) from None


def _check_tls(values: Mapping[str, Any]) -> None:
    """https:// needs a certificate; the TLS files go together."""
    if bool(values["cert-file"]) != bool(values["key-file"]):
        raise ConfigError("--cert-file and --key-file go together")
    if values["client-cert-auth"] and not values["trusted-ca-file"]:
        raise ConfigError("--client-cert-auth needs --trusted-ca-file to verify client certificates")
    keys = ("listen-client-urls", "listen-client-http-urls", "listen-metrics-urls")
    https = [u for key in keys for u in values[key] if is_https(u)]
    if https and not (values["cert-file"] or values["auto-tls"]):
        raise ConfigError(f"{https[0]} needs --cert-file and --key-file, or --auto-tls")


def _check_together(values: Mapping[str, Any], given: Given) -> None:
    """Checks that read two options: the retention must suit the compaction mode; TLS."""
    _check_tls(values)
    s = BY_FLAG["auto-compaction-retention"]
    retention = values[s.flag]
    try:
        make_policy(values["auto-compaction-mode"], retention, 0.0)
    except ValueError as exc:
        raise _located(s.error(retention, exc), given.get(s.flag, (None, ""))[1]) from None


def _lookup(key: str, where: str) -> Setting:
    """The setting a YAML key or override names: the flag name, dashes or underscores."""
    s = BY_FLAG.get(key.replace("_", "-"))
    if s is not None:
        return s
    close = difflib.get_close_matches(key.replace("_", "-"), BY_FLAG, 1)
    near = _BY_ATTR.get(key) or (close[0] if close else None)
    hint = f" (did you mean {near!r}?)" if near else ""
    raise ConfigError(f"{where}: unknown option {key!r}{hint}")


def _from_env(env: Mapping[str, str]) -> Given:
    # an empty variable counts as unset, as click treats it
    return {s.flag: (env[s.env], s.env) for s in SETTINGS if s.env and env.get(s.env, "") != ""}


def _from_yaml(path: Path) -> Given:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config-file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: want a mapping of option names to values")
    given: Given = {}
    for key, value in raw.items():
        s = _lookup(str(key), str(path))
        if s.flag in given:
            raise ConfigError(f"{path}: {key!r} sets {s.flag!r} again")
        given[s.flag] = (value, f"{path}: {key}")
    return given
