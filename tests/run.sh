#!/usr/bin/env bash
# Install what the tests need, then run every check CI runs:
# lint, format, types, the generated-code check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[test]'

# Test peers: etcdctl 3.4 and etcd 3.4 from Debian, where missing.
if ! command -v etcdctl >/dev/null || ! command -v etcd >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-client etcd-server >/dev/null
fi

ruff check metastore_core metastore_cli tests benchmarks protos/generate.py
ruff format --check metastore_core metastore_cli tests benchmarks protos/generate.py
mypy
python3 -m pytest -q -p no:cacheprovider "$@"
