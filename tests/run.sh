#!/usr/bin/env bash
# Install what the tests need, then run every check CI runs:
# lint, format, types, the generated-code check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q -e '.[test]'

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}

# Binaries out of a Debian package, without installing the package: etcd-server would start a
# system etcd on 127.0.0.1:2379 on a host that runs systemd, and promtool comes inside the
# Prometheus server's package. apt-get download + dpkg -x take the files alone; no service is
# enabled or started. Usage: binaries_from PACKAGE BINARY...
binaries_from() {
    local pkg=$1 tmp
    shift
    apt_update
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null)
    dpkg -x "$tmp"/*.deb "$tmp/root"
    for bin in "$@"; do
        $SUDO install -m 0755 "$tmp/root/usr/bin/$bin" "/usr/local/bin/$bin"
    done
    rm -rf "$tmp"
}

# Test peers: etcd 3.4 and etcdctl 3.4 (Debian etcd-server, etcd-client).
command -v etcd >/dev/null || binaries_from etcd-server etcd
command -v etcdctl >/dev/null || binaries_from etcd-client etcdctl
# promtool checks the /metrics exposition and the alert rules (deploy/prometheus).
command -v promtool >/dev/null || binaries_from prometheus promtool
# systemd-analyze verifies deploy/systemd/metastore.service; groff checks the man pages.
if ! command -v systemd-analyze >/dev/null || ! command -v groff >/dev/null; then
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd groff-base >/dev/null
fi

ruff check metastore_core metastore_cli tests benchmarks protos/generate.py
ruff format --check metastore_core metastore_cli tests benchmarks protos/generate.py
mypy
python3 -m pytest -q -p no:cacheprovider "$@"
