"""The generated code in metastore_core/pb matches protos/ (run `python protos/generate.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check", str(tmp_path)], check=True
    )
    committed = ROOT / "metastore_core" / "pb"
    want = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.py*")}
    have = {
        p.relative_to(committed): p.read_text()
        for p in committed.rglob("*.py*")
        if "__pycache__" not in str(p)
    }
    assert sorted(have) == sorted(want), "files differ: run python protos/generate.py"
    stale = [str(k) for k in want if want[k] != have[k]]
    assert not stale, f"stale generated code {stale}: run python protos/generate.py"


def test_wire_names_are_etcds() -> None:
    from metastore_core.pb.etcdserverpb import rpc_pb2
    from metastore_core.pb.mvccpb import kv_pb2

    services = rpc_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"KV", "Watch", "Lease", "Cluster", "Maintenance", "Auth"}
    assert services["KV"].full_name == "etcdserverpb.KV"
    assert kv_pb2.KeyValue.DESCRIPTOR.full_name == "mvccpb.KeyValue"
    fields = {f.name: f.number for f in rpc_pb2.Compare.DESCRIPTOR.fields}
    assert fields["range_end"] == 64 and fields["lease"] == 8
