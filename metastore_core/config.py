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
)

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
PROCESS = "Process"
GROUPS = (STORAGE, NETWORK, REQUESTS, RELIABILITY, WATCH_LEASE, COMPACTION, PROCESS)


def split_url(url: str) -> tuple[str, int]:
    """'http://HOST:PORT' or 'HOST:PORT' -> (HOST, PORT); https and other schemes are refused."""
    parsed = urlparse(url if "://" in url else "http://" + url)
    if parsed.scheme == "https":
        raise ValueError("TLS is not supported yet (it comes with the auth/TLS work); use http://")
    if parsed.scheme != "http":
        raise ValueError(f"{parsed.scheme}:// is not supported; use http://")
    try:
        port = parsed.port
    except ValueError:  # not a number, or out of range
        port = None
    if not parsed.hostname or port is None or parsed.path not in ("", "/") or parsed.query:
        raise ValueError("want http://HOST:PORT")
    return parsed.hostname, port


def _url_problem(url: str) -> str | None:
    try:
        split_url(url)
    except ValueError as exc:
        return str(exc)
    return None


HTTP_URL = Rule("each http://HOST:PORT", _url_problem)


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
            more="One daemon per directory: a second one exits at once naming the holder's PID.",
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
            more="https:// is refused until TLS support comes with the auth work.",
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
        Setting("listen-metrics-urls", NETWORK, "HTTP addresses for /metrics and /health.", check=HTTP_URL),
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
        256 * MiB,
        Setting(
            "max-response-bytes",
            REQUESTS,
            "Largest reply (a Range or a Txn's reads), in bytes.",
            check=at_least(64 * KiB),
            metavar="BYTES",
            more='A read that would build more gets RESOURCE_EXHAUSTED "etcdserver: response is too '
            'large" as soon as it passes the limit (etcd refuses replies over its 2 GiB gRPC send '
            "limit); page with limit, or ask for keys_only or count_only. Big reads are built in "
            "steps that let other requests run between them.",
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
    given = _from_yaml(yaml_path) if yaml_path is not None else {}
    given.update(_from_env(os.environ if env is None else env))
    for key, raw in overrides.items():
        if raw is not None:
            given[_lookup(key, "flags").flag] = (raw, "")
    preset = _value(BY_FLAG["preset"], given, "default")
    values = {s.flag: preset if s.flag == "preset" else _value(s, given, preset) for s in SETTINGS}
    _check_together(values, given)
    return Config(**{s.attr: s.attr_value(values[s.flag]) for s in SETTINGS})


Given = dict[str, tuple[Any, str]]  # flag -> (raw value, where it came from; "" = a flag)


def _located(exc: ConfigError, origin: str) -> ConfigError:
    return ConfigError(f"{exc} (from {origin})") if origin else exc


def _value(s: Setting, given: Given, preset: str) -> Any:
    raw, origin = given.get(s.flag, (s.presets.get(preset, s.default), ""))
    try:
        return s.coerce(raw)
    except ConfigError as exc:
        raise _located(exc, origin) from None


def _check_together(values: Mapping[str, Any], given: Given) -> None:
    """Checks that read two options: the retention must suit the compaction mode."""
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
