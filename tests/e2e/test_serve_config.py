"""`metastore serve` configuration as an operator meets it: YAML keys are the flag names,
and a bad value stops the start with one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_kit import stats

from conftest import ROOT, free_port, start_metastore


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `metastore serve` on free ports, expecting it to refuse to start."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "metastore_cli",
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen-client-urls",
            f"http://127.0.0.1:{free_port()}",
            "--listen-metrics-urls",
            f"http://127.0.0.1:{free_port()}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def assert_refused(r: subprocess.CompletedProcess[str], tmp_path: Path, message: str) -> None:
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"Error: {message}\n"
    assert not (tmp_path / "data").exists()  # refused before anything was touched


@pytest.mark.parametrize("flag", ["--listen-client-urls", "--listen-metrics-urls"])
def test_https_url_without_a_certificate_is_refused_at_start(tmp_path: Path, flag: str) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    r = serve(tmp_path, flag, url)
    assert_refused(r, tmp_path, f"{url} needs --cert-file and --key-file, or --auto-tls")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-txn-ops", "-5"], {}, "--max-txn-ops -5: must be at least 1"),
        (["--max-concurrent-requests", "0"], {}, "--max-concurrent-requests 0: must be at least 1"),
        (["--max-memory", "1000"], {}, "--max-memory 1000: must be at least 1048576"),
        (["--request-timeout", "soon"], {}, "--request-timeout soon: want a number"),
        (
            [],
            {"METASTORE_MAX_CONNECTIONS": "0"},
            "--max-connections 0: must be at least 1 (from METASTORE_MAX_CONNECTIONS)",
        ),
    ],
)
def test_bad_values_are_refused_at_start(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    assert_refused(serve(tmp_path, *args, env=env), tmp_path, message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_memory_bytes: 1\n", "{path}: unknown option 'max_memory_bytes' (did you mean 'max-memory'?)"),
        ("max-memory: lots\n", "--max-memory lots: want a whole number (from {path}: max-memory)"),
    ],
)
def test_yaml_mistakes_are_refused_at_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "metastore.yaml"
    path.write_text(text)
    r = serve(tmp_path, "--config-file", str(path))
    assert_refused(r, tmp_path, message.format(path=path))


def test_yaml_keys_are_the_flag_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metastore.yaml"
    # these keys were refused as unknown while the loader wanted attribute names
    path.write_text(
        "max-memory: 536870912\nmax-concurrent-requests: 77\nrequest-timeout: 12\n"
        "shutdown-timeout: 5\nunsafe-no-fsync: true\nmax_connections: 1234\n"
    )
    monkeypatch.setenv("METASTORE_MAX_CONNECTIONS", "4321")  # env beats the file
    p = start_metastore(
        tmp_path / "data",
        *("--config-file", str(path), "--max-concurrent-requests", "78", "--log-format", "json"),
    )
    try:
        s = stats(p.endpoint)
        assert (s.memory_max_bytes, s.requests_max, s.connections_max) == (512 << 20, 78, 4321)
    finally:
        assert p.stop() == 0
    # one JSON object per line, ours and the libraries' alike, with etcd's keys
    records = [json.loads(line) for line in p.output().splitlines()]
    assert all({"level", "ts", "caller", "msg"} <= r.keys() for r in records)
    # the effective configuration, each value with where it came from
    config = next(r["config"] for r in records if r["msg"] == "effective configuration")
    assert config["--max-memory"] == f"536870912 (file {path})"
    assert config["--max-connections"] == "4321 (env METASTORE_MAX_CONNECTIONS)"
    assert config["--max-concurrent-requests"] == "78 (flag)"
    assert config["--max-txn-ops"] == "128 (default)"
    assert config["--unsafe-no-fsync"] == f"true (file {path})"
    assert any(r["level"] == "warn" and "--unsafe-no-fsync" in r["msg"] for r in records)
    phases = [r["phase"] for r in records if "phase" in r]
    assert phases == ["stop-accepting", "drain", "persist-state", "close-resources"]


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory\n")
    r = serve(tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines()[-1] == f"Error: data dir {tmp_path / 'data'} is not a directory"


def test_a_damaged_leveldb_is_one_line(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    assert p.stop() == 0
    (tmp_path / "data" / "db" / "CURRENT").write_text("MANIFEST-999999\n")
    last = serve(tmp_path).stderr.splitlines()[-1]
    assert last.startswith(f"Error: cannot open LevelDB at {tmp_path / 'data' / 'db'}: Corruption: ")
    assert "b'Corruption" not in last  # LevelDB's words, decoded


def test_help_groups_the_options() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "metastore_cli", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0
    assert "Reliability:\n  --shutdown-timeout SECONDS" in r.stdout
    assert "--max-memory BYTES" in r.stdout and "at least 1048576" in r.stdout
    assert "--test-faults" not in r.stdout
