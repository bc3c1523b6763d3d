"""The benchmark harness still runs end to end (quickest mode, metastore only; no timing checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)  # ~20 s on an idle machine; the shared CI box is often not idle
def test_bench_harness_quick(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    args = [sys.executable, "-m", "benchmarks.run", "--quick", "--targets", "metastore"]
    args += ["--duration", "0.3", "--warmup", "0.1", "--load-keys", "300", "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    rows = {(r["workload"], r["concurrency"]): r["targets"]["metastore"] for r in result["rows"]}
    put = rows[("put", 64)]
    assert "skipped" not in put and put["rate"]["median"] > 0 and put["errors"] == 0
    for (name, c), t in rows.items():  # every workload either ran cleanly or says why not
        assert "skipped" in t or t["errors"] == 0, (name, c, t)
    load = result["load"]["servers"]["metastore"]
    assert load["restart_s"] > 0 and load["disk_mib"] > 0
    assert [(r["workload"], r["concurrency"]) for r in result["reliability"]] == [
        ("put", 1),
        ("put", 64),
        ("get", 64),
    ]
    assert "| put | 64 |" in (tmp_path / "latest.md").read_text()
