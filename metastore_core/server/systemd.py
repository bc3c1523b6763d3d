"""systemd's notify protocol (sd_notify(3)) without libsystemd: datagrams to $NOTIFY_SOCKET.

Under `Type=notify` the daemon says READY=1 once it serves (systemctl start returns then, and
units ordered after it start), STATUS=... lines that `systemctl status` shows, STOPPING=1 when a
graceful stop begins, and, when the unit sets WatchdogSec=, WATCHDOG=1 at half that interval
for as long as the event loop runs and no supervised loop has given up: a hung daemon is
restarted. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("metastore.systemd")


class Notifier:
    """Sends notify messages to the socket systemd gave this process, if any."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_s = 0.0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """One datagram of KEY=VALUE lines; False (and a debug log) if it could not be sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.debug("systemd notify failed: %s", exc)
            return False
        return True

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    async def run_watchdog(self, alive: Callable[[], bool]) -> None:
        """WATCHDOG=1 every half interval while alive() holds (a supervised loop of the server)."""
        if not self.enabled or self.watchdog_s <= 0:
            return
        while True:
            if alive():
                self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
