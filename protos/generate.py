"""Regenerate metastore_core/pb from protos/: `python protos/generate.py`.

With `--check DIR` it writes into DIR instead, so a test can compare the
result with the committed code and fail when it is stale.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "metastore_core" / "pb"
PROTOS = [
    "mvccpb/kv.proto",
    "authpb/auth.proto",
    "leasepb/lease.proto",
    "etcdserverpb/rpc.proto",
    "v3lockpb/v3lock.proto",
    "v3electionpb/v3election.proto",
    "metastore/admin/v1/admin.proto",
]
HAS_SERVICES = {"etcdserverpb", "v3lockpb", "v3electionpb", "metastore/admin/v1"}
# protoc writes imports relative to protos/; our code lives under metastore_core.pb.
IMPORT = re.compile(
    r"^(from|import) (etcdserverpb|mvccpb|authpb|leasepb|v3lockpb|v3electionpb|metastore\.admin\.v1)\b", re.M
)


def generate(out: Path) -> None:
    """Run protoc into a scratch dir, fix imports, and lay the result into out."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{HERE}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *[str(HERE / p) for p in PROTOS],
        ]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            if "_grpc" in src.name and str(rel.parent) not in HAS_SERVICES:
                continue
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(IMPORT.sub(r"\1 metastore_core.pb.\2", src.read_text()))
        for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
            (d / "__init__.py").write_text("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", type=Path, help="write here instead of metastore_core/pb")
    ns = parser.parse_args()
    generate(ns.check or OUT)


if __name__ == "__main__":
    main()
