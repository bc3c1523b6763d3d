"""`--event-loop`: the daemon serves, watches and stops cleanly on either loop (uvloop is the default)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import etcdctl, start_metastore


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serves_and_stops_cleanly(tmp_path: Path, loop: str) -> None:
    p = start_metastore(tmp_path / "d", "--event-loop", loop)
    try:
        watch = subprocess.Popen(
            [
                "etcdctl",
                f"--endpoints={p.endpoint}",
                "watch",
                "k",
                "--rev=2",
            ],  # from the put on, however late the watch starts
            stdout=subprocess.PIPE,
            text=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        assert etcdctl(p.endpoint, "put", "k", "v").stdout == "OK\n"
        assert etcdctl(p.endpoint, "get", "k", "--print-value-only").stdout == "v\n"
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(3)]
        assert lines == ["PUT\n", "k\n", "v\n"]
        watch.terminate()
        watch.wait(10)
    finally:
        assert p.stop() == 0


def test_unknown_event_loop_is_refused(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "d", "--event-loop", "tokio", ready=False)
    assert p.proc.wait(30) == 2
    assert "Error: --event-loop tokio: must be uvloop or asyncio" in p.output()
