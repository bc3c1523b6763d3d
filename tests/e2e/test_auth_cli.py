"""End to end: a daemon with mutual TLS and auth, driven by etcdctl, the metastore CLI and a Python
client; the CLI's TLS and credential flags and METASTORE_* variables, SIGHUP reloading certificates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tlskit import CA

from conftest import ROOT, etcdctl, free_port, run_client, start_metastore


def metastore(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metastore_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.peer
def test_tls_and_auth_through_etcdctl_and_the_cli(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    server, client = ca.issue("server", server=True), ca.issue("client")
    port = free_port()
    https = f"https://127.0.0.1:{port}"
    p = start_metastore(  # the last --listen-client-urls wins: TLS only
        tmp_path / "data",
        "--listen-client-urls",
        https,
        "--bcrypt-cost",
        "4",
        "--cert-file",
        str(server.cert),
        "--key-file",
        str(server.key),
        "--trusted-ca-file",
        str(ca.cert),
        "--client-cert-auth",
        port=port,
        ready=False,
    )
    proc = p.proc
    tls = ["--cacert", str(ca.cert), "--cert", str(client.cert), "--key", str(client.key)]
    try:
        for _ in range(100):
            if metastore("health", "--endpoints", https, *tls).returncode == 0:
                break
            time.sleep(0.1)
        assert metastore("health", "--endpoints", https, *tls).returncode == 0
        # plaintext: no answer (7, "no connection", in the CLI's one table of exit codes)
        assert metastore("health", "--endpoints", p.endpoint).returncode == 7

        ctl = ["", f"--cacert={ca.cert}", f"--cert={client.cert}", f"--key={client.key}"]
        for step in (
            ("user", "add", "root:r00t"),
            ("user", "grant-role", "root", "root"),
            ("user", "add", "alice:pw"),
            ("role", "add", "app"),
            ("role", "grant-permission", "app", "--prefix", "readwrite", "app/"),
            ("user", "grant-role", "alice", "app"),
            ("auth", "enable"),
            ("--user=alice:pw", "put", "app/x", "1"),
        ):
            r = etcdctl(https, *ctl[1:], *step)
            assert r.returncode == 0, (step, r.stderr)
        r = etcdctl(https, *ctl[1:], "get", "app/x")  # the certificate's CN "client" is no user
        assert "etcdserver: permission denied" in r.stderr or "user name" in r.stderr

        # the CLI: admin calls need root now, given by flag or by METASTORE_* variables
        r = metastore("stats", "--endpoints", https, *tls, "-w", "json")
        assert r.returncode != 0 and "user name not found" in r.stderr
        r = metastore("stats", "--endpoints", https, *tls, "--user", "alice:pw")
        assert r.returncode != 0 and "permission denied" in r.stderr
        r = metastore("stats", "--endpoints", https, *tls, "--user", "root", "--password", "wrong")
        assert r.returncode != 0 and "authentication failed" in r.stderr
        env = {
            "METASTORE_ENDPOINTS": https,
            "METASTORE_CACERT": str(ca.cert),
            "METASTORE_CERT": str(client.cert),
            "METASTORE_KEY": str(client.key),
            "METASTORE_USER": "root:r00t",
        }
        r = metastore("stats", env=env)
        assert r.returncode == 0 and "revision:" in r.stdout, r.stderr
        snap = tmp_path / "snap.db"
        r = metastore("snapshot", "save", str(snap), "--user", "alice:pw", env=env)
        assert r.returncode != 0 and "permission denied" in r.stderr
        r = metastore("snapshot", "save", str(snap), env=env)
        assert r.returncode == 0 and snap.exists(), r.stderr

        # SIGHUP re-reads the certificates, whether or not the files changed
        os.kill(proc.pid, signal.SIGHUP)
        for _ in range(50):
            if "TLS certificates reloaded" in p.output():
                break
            time.sleep(0.1)
        assert "TLS certificates reloaded" in p.output()
        assert metastore("health", "--endpoints", https, *tls).returncode == 0

        r = metastore("stop", "--user", "root:r00t", env=env)
        assert r.returncode == 0, r.stderr
        assert proc.wait(30) == 0
        log = p.output()
        assert "r00t" not in log and "pw" not in log.replace("pwd", "")
    finally:
        p.stop()


@pytest.mark.peer
def test_a_python_client_with_a_user(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data", "--bcrypt-cost", "4")
    try:
        for step in (
            ("user", "add", "root:r00t"),
            ("user", "grant-role", "root", "root"),
            ("auth", "enable"),
        ):
            assert etcdctl(p.endpoint, *step).returncode == 0
        out = run_client(
            """
            import asyncio, aetcd

            async def main():
                # python-etcd3 sends credentials only over TLS; aetcd sends the token as metadata
                async with aetcd.Client(HOST, PORT, username="root", password="r00t") as c:
                    await c.put(b"k", b"v")
                    print((await c.get(b"k")).value.decode())
                async with aetcd.Client(HOST, PORT) as anonymous:
                    try:
                        await anonymous.get(b"k")
                    except aetcd.ClientError as exc:
                        print(exc)

            asyncio.run(main())
            """,
            p.endpoint,
        )
        assert out.split("\n")[:2] == ["v", "etcdserver: user name is empty"]
        r = metastore("stop", "--endpoints", p.endpoint)  # auth on: the admin service wants root
        assert r.returncode != 0 and "user name is empty" in r.stderr
    finally:
        p.stop()
