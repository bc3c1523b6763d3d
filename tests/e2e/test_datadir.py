"""The data dir: one daemon at a time, private, and everything survives a restart."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, Proc, etcdctl, free_port, start_metastore


def test_second_daemon_on_same_dir_fails_fast(metastore: Proc) -> None:
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "metastore_cli",
            "serve",
            "--data-dir",
            str(metastore.data_dir),
            "--listen-client-urls",
            f"http://127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=ROOT,
    )
    took = time.monotonic() - t0
    assert r.returncode == 1
    assert (
        f"data dir {metastore.data_dir} is in use by another metastore process (pid {metastore.pid})"
        in r.stderr
    )
    assert took < 5  # the bound is 2 s for the check itself; interpreter start-up is extra
    # the first daemon is untouched
    assert etcdctl(metastore.endpoint, "put", "a", "b").returncode == 0


def test_port_in_use_is_a_clear_error(metastore: Proc, tmp_path: Path) -> None:
    port = metastore.endpoint.rsplit(":", 1)[1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "metastore_cli",
            "serve",
            "--data-dir",
            str(tmp_path / "other"),
            "--listen-client-urls",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        cwd=ROOT,
    )
    assert r.returncode == 1 and "cannot listen on 127.0.0.1:" in r.stderr


def test_data_dir_is_private(metastore: Proc) -> None:
    assert stat.S_IMODE(metastore.data_dir.stat().st_mode) == 0o700


def test_restart_keeps_data_revisions_and_ids(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "d")
    for i in range(5):
        etcdctl(p.endpoint, "put", f"k{i}", f"v{i}")
    etcdctl(p.endpoint, "del", "k0")
    before = etcdctl(p.endpoint, "endpoint", "status", "-w", "json").stdout
    assert p.stop() == 0
    p2 = start_metastore(tmp_path / "d")
    try:
        after = etcdctl(p2.endpoint, "endpoint", "status", "-w", "json").stdout
        import json

        b, a = json.loads(before)[0]["Status"]["header"], json.loads(after)[0]["Status"]["header"]
        assert (a["cluster_id"], a["member_id"], a["revision"]) == (b["cluster_id"], b["member_id"], 7)
        assert etcdctl(p2.endpoint, "get", "k", "--prefix", "--keys-only").stdout.split() == [
            "k1",
            "k2",
            "k3",
            "k4",
        ]
        assert etcdctl(p2.endpoint, "get", "k0", "--rev=2", "--print-value-only").stdout == "v0\n"
        assert etcdctl(p2.endpoint, "put", "k9", "x").returncode == 0
        assert '"revision":8' in etcdctl(p2.endpoint, "get", "k9", "-w", "json").stdout
    finally:
        p2.stop()


def test_memory_backend_starts_empty_each_time(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "m", "--backend", "memory")
    etcdctl(p.endpoint, "put", "a", "1")
    p.stop()
    p2 = start_metastore(tmp_path / "m", "--backend", "memory")
    try:
        assert etcdctl(p2.endpoint, "get", "a").stdout == ""
    finally:
        p2.stop()


def test_a_foreign_data_dir_is_one_line_of_error_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a data dir")
    r = subprocess.run(
        [
            *(sys.executable, "-m", "metastore_cli", "serve", "--data-dir", str(tmp_path)),
            *("--listen-client-urls", f"http://127.0.0.1:{free_port()}"),
            *("--listen-metrics-urls", f"http://127.0.0.1:{free_port()}"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 1
    assert r.stderr == (
        f"Error: data dir {tmp_path} is not empty and is not a metastore data dir "
        "(no metastore.datadir); refusing to use it: give a new or empty directory\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
