"""Every setting reaches Config from YAML, env and flags, in that precedence, and is checked."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from metastore_core.config import (
    BY_FLAG,
    PRESET_NAMES,
    SETTINGS,
    Config,
    ConfigError,
    effective,
    host_port,
    load_config,
    load_config_traced,
)
from metastore_core.setting import Setting, show

# A valid value for string settings that have no fixed choices.
TEXT_SAMPLES = {
    "name": "member-1",
    "auto-compaction-retention": "7",
    "experimental-distributed-tracing-address": "collector:4317",
    "experimental-distributed-tracing-service-name": "kv-store",
    "experimental-distributed-tracing-instance-id": "member-1",
    "auth-token": "jwt,pub-key=/etc/metastore/jwt.pub,sign-method=ES256",
    "cert-file": "/etc/metastore/server.pem",
    "key-file": "/etc/metastore/server-key.pem",
    "trusted-ca-file": "/etc/metastore/ca.pem",
}


def sample(s: Setting) -> Any:
    """A valid value, in the flag's terms, that differs from the default."""
    if s.kind is bool:
        return not s.default
    if s.kind in (int, float):
        return s.default + (1.5 if s.kind is float else 1)
    if s.kind is Path:
        return Path("elsewhere")
    if s.kind == list[str]:
        return ["http://127.0.0.1:1234", "127.0.0.1:1235"]
    if s.check is not None and s.check.choices:
        return next(c for c in s.check.choices if c != s.default)
    return TEXT_SAMPLES[s.flag]


def expected(cfg: Config, s: Setting, value: Any) -> None:
    assert getattr(cfg, s.attr) == s.attr_value(value), s.flag


def yaml_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def test_every_config_attribute_is_declared_once() -> None:
    assert [s.attr for s in SETTINGS] == [f.name for f in fields(Config)]
    assert len(BY_FLAG) == len(SETTINGS)
    for s in SETTINGS:
        assert s.help and s.help.endswith(".") and "\n" not in s.help, s.flag
        assert set(s.presets) <= set(PRESET_NAMES) - {"default"}, s.flag
        for value in [s.default, *s.presets.values()]:
            s.coerce(value)  # defaults and preset values pass their own checks


def test_yaml_file_sets_every_declared_key(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump({s.yaml_key: yaml_value(sample(s)) for s in SETTINGS}))
    cfg = load_config(path, {}, env={})
    for s in SETTINGS:
        expected(cfg, s, sample(s))


def test_yaml_keys_may_use_underscores(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("max_memory: 3000000\nshutdown_timeout: 4\nunsafe_no_fsync: true\n")
    cfg = load_config(path, {}, env={})
    assert (cfg.max_memory_bytes, cfg.shutdown_timeout_s, cfg.fsync) == (3_000_000, 4.0, False)


def test_env_sets_every_declared_variable() -> None:
    env = {s.env: show(sample(s)) for s in SETTINGS if s.env}
    cfg = load_config(None, {}, env=env)
    for s in SETTINGS:
        if s.env:
            expected(cfg, s, sample(s))


def test_hidden_settings_have_no_env_var() -> None:
    # server/faults.py wants METASTORE_TEST_FAULTS=1 *and* the flag: the variable alone is not enough
    assert BY_FLAG["test-faults"].env is None
    assert not load_config(None, {}, env={"METASTORE_TEST_FAULTS": "1"}).test_faults
    assert load_config(None, {"test-faults": True}, env={}).test_faults


def test_flags_set_every_setting_from_text() -> None:
    cfg = load_config(None, {s.flag.replace("-", "_"): show(sample(s)) for s in SETTINGS}, env={})
    for s in SETTINGS:
        expected(cfg, s, sample(s))


@pytest.mark.parametrize(
    ("flag", "env", "yaml_text", "want"),
    [
        (None, None, "", 10_000),  # default
        (None, None, "preset: safe\n", 5_000),  # preset
        (None, None, "preset: safe\nmax-connections: 7\n", 7),  # YAML beats the preset
        (None, "8", "max-connections: 7\n", 8),  # env beats YAML
        ("9", "8", "max-connections: 7\n", 9),  # flag beats env
    ],
)
def test_precedence(tmp_path: Path, flag: str | None, env: str | None, yaml_text: str, want: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    environ = {} if env is None else {"METASTORE_MAX_CONNECTIONS": env}
    assert load_config(path, {"max-connections": flag}, env=environ).max_connections == want


@pytest.mark.parametrize("where", ["flag", "env", "yaml"])
def test_the_preset_may_be_named_anywhere(tmp_path: Path, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: high-load\n" if where == "yaml" else "")
    env = {"METASTORE_PRESET": "high-load"} if where == "env" else {}
    flags = {"preset": "high-load"} if where == "flag" else {}
    cfg = load_config(path, flags, env=env)
    assert (cfg.max_connections, cfg.max_memory_bytes, cfg.shutdown_timeout_s) == (50_000, 8 << 30, 60)


def test_presets_are_the_specs() -> None:
    high = load_config(None, {"preset": "high-load"}, env={})
    assert (high.max_connections, high.max_concurrent_requests, high.max_memory_bytes) == (
        50_000,
        20_000,
        8 << 30,
    )
    assert (high.max_recv_bytes, high.request_timeout_s, high.connection_timeout_s) == (8 << 20, 60, 30)
    assert high.shutdown_timeout_s == 60
    safe = load_config(None, {"preset": "safe", "request_timeout": "3"}, env={})
    assert (safe.max_connections, safe.max_concurrent_requests, safe.max_memory_bytes) == (
        5_000,
        2_000,
        1 << 30,
    )
    assert (safe.max_recv_bytes, safe.connection_timeout_s, safe.enable_crc) == (1 << 20, 5, True)
    assert safe.request_timeout_s == 3  # an explicit option beats the preset
    assert load_config(None, {"preset": "default"}, env={}) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_memory_bytes: 5\n", "{path}: unknown option 'max_memory_bytes' (did you mean 'max-memory'?)"),
        ("max-conections: 5\n", "{path}: unknown option 'max-conections' (did you mean 'max-connections'?)"),
        ("colour: blue\n", "{path}: unknown option 'colour'"),
        ("max-txn-ops: [1, 2]\n", "--max-txn-ops 1,2: want a whole number (from {path}: max-txn-ops)"),
        ("enable_crc: maybe\n", "--enable-crc maybe: want true or false (from {path}: enable_crc)"),
        ("max-txn-ops: -5\n", "--max-txn-ops -5: must be at least 1 (from {path}: max-txn-ops)"),
        ("max-memory:\n", "--max-memory null: want a whole number (from {path}: max-memory)"),
        ("max-memory: 1\nmax_memory: 2\n", "{path}: 'max_memory' sets 'max-memory' again"),
        ("- max-memory\n", "{path}: want a mapping of option names to values"),
        ("a: [\n", "{path}: line 2 not valid YAML"),
    ],
)
def test_yaml_mistakes_are_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, env={})
    assert str(info.value).startswith(message.format(path=path))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config-file .*nope.yaml: No such file or directory$"):
        load_config(tmp_path / "nope.yaml", {}, env={})


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"max-txn-ops": "-5"}, {}, "--max-txn-ops -5: must be at least 1"),
        ({"max-concurrent-requests": "0"}, {}, "--max-concurrent-requests 0: must be at least 1"),
        ({"max-memory": "1000"}, {}, "--max-memory 1000: must be at least 1048576"),
        ({"max-recv-bytes": "1000"}, {}, "--max-recv-bytes 1000: must be at least 65536"),
        ({"request-timeout": "0"}, {}, "--request-timeout 0: must be more than 0"),
        ({"corrupt-check-interval": "-1"}, {}, "--corrupt-check-interval -1: must be at least 0"),
        ({"event-loop": "tokio"}, {}, "--event-loop tokio: must be uvloop or asyncio"),
        ({"preset": "turbo"}, {}, "--preset turbo: must be default, high-load or safe"),
        (
            {},
            {"METASTORE_MAX_TXN_OPS": "x"},
            "--max-txn-ops x: want a whole number (from METASTORE_MAX_TXN_OPS)",
        ),
        (
            {"auto-compaction-mode": "revision", "auto-compaction-retention": "1h"},
            {},
            "--auto-compaction-retention 1h: invalid revision retention '1h': want a whole number",
        ),
    ],
)
def test_bad_values_are_refused_naming_flag_and_value(
    flags: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, flags, env=env)
    assert str(info.value) == message


@pytest.mark.parametrize("flag", ["listen-client-urls", "advertise-client-urls", "listen-metrics-urls"])
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("unix://127.0.0.1:2379", "unix:// is not supported; use http:// or https://"),
        ("http://127.0.0.1", "want http://HOST:PORT or https://HOST:PORT"),
        ("https://127.0.0.1:99999", "want http://HOST:PORT or https://HOST:PORT"),
        ("http://127.0.0.1:2379/v3", "want http://HOST:PORT or https://HOST:PORT"),
    ],
)
def test_urls_must_be_http_or_https(flag: str, url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {flag: f"http://127.0.0.1:1,{url}"}, env={})
    assert str(info.value) == f"--{flag} {url}: {reason}"


def test_urls_accepted() -> None:
    cfg = load_config(None, {"listen-client-urls": "http://127.0.0.1:1, [::1]:2,HTTP://localhost:3/"}, env={})
    assert [host_port(u) for u in cfg.listen_client_urls] == ["127.0.0.1:1", "[::1]:2", "localhost:3"]
    assert host_port("https://127.0.0.1:1") == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"listen-client-urls": "https://127.0.0.1:1"},
            "https://127.0.0.1:1 needs --cert-file and --key-file, or --auto-tls",
        ),
        (
            {"listen-metrics-urls": "HTTPS://127.0.0.1:1"},
            "HTTPS://127.0.0.1:1 needs --cert-file and --key-file, or --auto-tls",
        ),
        ({"cert-file": "/c.pem"}, "--cert-file and --key-file go together"),
        (
            {"client-cert-auth": "true"},
            "--client-cert-auth needs --trusted-ca-file to verify client certificates",
        ),
    ],
)
def test_tls_options_go_together(flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, flags, env={})
    assert str(info.value) == message
    load_config(None, {"listen-client-urls": "https://127.0.0.1:1", "auto-tls": "true"}, env={})


def test_config_imports_no_io_or_cli_framework() -> None:
    code = "import sys, metastore_core.config; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not {"grpc", "asyncio", "typer", "click", "rich"} & set(ast.literal_eval(loaded))


def test_sources_name_where_each_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("max-txn-ops: 64\nname: from-file\n")
    env = {"METASTORE_NAME": "from-env", "METASTORE_PRESET": "safe"}
    config, sources = load_config_traced(path, {"log_level": "debug"}, env)
    assert config.name == "from-env" and config.max_txn_ops == 64 and config.log_level == "debug"
    assert sources["name"] == "env METASTORE_NAME"
    assert sources["max-txn-ops"] == f"file {path}"
    assert sources["log-level"] == "flag"
    assert sources["max-memory"] == "preset safe"  # the safe preset sets it
    assert sources["backend"] == "default"
    shown = effective(config, sources)
    assert (
        shown["--max-memory"] == "1073741824 (preset safe)"
        and shown["--name"] == "from-env (env METASTORE_NAME)"
    )
    assert "--test-faults" not in shown  # hidden, and not set


def test_secrets_are_masked_in_the_effective_configuration() -> None:
    name = dataclasses.replace(BY_FLAG["name"], secret=True)  # stands in for a password setting
    config = Config(name="hunter2")
    assert effective(config, {"name": "flag"}, (name,)) == {"--name": "****** (flag)"}
    assert effective(Config(name=""), {}, (name,)) == {"--name": "(unset) (default)"}
