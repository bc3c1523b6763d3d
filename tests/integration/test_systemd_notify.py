"""systemd's notify protocol, read from a datagram socket as systemd would: READY=1 once serving,
STATUS lines, WATCHDOG=1 while alive, STOPPING=1 when a stop begins."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from metastore_core.config import Config
from metastore_core.server.app import Server
from metastore_core.server.systemd import Notifier

from conftest import free_port


async def _messages(sock: socket.socket, until: str, timeout: float = 10) -> list[str]:
    """Datagrams as text until one contains `until`."""
    loop = asyncio.get_running_loop()
    out: list[str] = []
    async with asyncio.timeout(timeout):
        while not out or until not in out[-1]:
            out.append((await loop.sock_recv(sock, 4096)).decode())
    return out


async def test_ready_status_watchdog_and_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WatchdogSec=0.2: a ping every 0.1 s
    url = f"http://127.0.0.1:{free_port()}"
    server = Server(
        Config(
            backend="memory",
            listen_client_urls=[url],
            listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        )
    )
    try:
        await server.start()
        started = await _messages(sock, "READY=1")
        assert started[0] == "STATUS=starting: loading the store"
        ready = started[-1].split("\n")
        assert ready == ["READY=1", f"STATUS=serving on {url} at revision 1", f"MAINPID={os.getpid()}"]
        pings = await _messages(sock, "WATCHDOG=1")
        pings += await _messages(sock, "WATCHDOG=1")
        assert pings[-2:] == ["WATCHDOG=1", "WATCHDOG=1"]
    finally:
        await server.stop()
    stopping = await _messages(sock, "close-resources")
    first = next(m for m in stopping if "STOPPING=1" in m)
    assert first == "STOPPING=1\nSTATUS=shutting down: stop() called"
    phases = [
        m.removeprefix("STATUS=shutting down: ") for m in stopping if m.startswith("STATUS=shutting down: ")
    ]
    assert phases[-4:] == ["stop-accepting", "drain", "persist-state", "close-resources"]
    sock.close()


def test_abstract_socket_and_no_socket() -> None:
    name = f"metastore-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_PID": "1"})
        assert notifier.send("STATUS=hello") and sock.recv(100) == b"STATUS=hello"
        assert notifier.watchdog_s == 0  # WATCHDOG_USEC unset, and WATCHDOG_PID names another process
    assert not Notifier({}).enabled and not Notifier({}).send("READY=1")
