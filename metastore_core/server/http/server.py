"""The listening side of an HTTP port: sockets on one or more addresses, a task per connection, a cap."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from metastore_core.server.http.connection import Connection, Refusal
from metastore_core.server.http.limits import BodyBudget, Limits
from metastore_core.server.http.router import Handler

# How long close() waits for cancelled connections and closed listeners.
CLOSE_WAIT_SECONDS = 1.0


class HttpServer:
    """Serves one handler on every address it is started on, at most `max_connections` at a time."""

    def __init__(
        self, handler: Handler, limits: Limits | None = None, refusal: Refusal | None = None
    ) -> None:
        """refusal words the answer to a request refused before any handler (default: plain text)."""
        self.handler = handler
        self.limits = limits or Limits()
        self.refusal = refusal
        self.budget = BodyBudget(self.limits.max_bodies_bytes)
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        """Connections being served now, on all addresses."""
        return len(self._connections)

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0 picks a free port), with TLS when given a context; returns the port."""
        server = await asyncio.start_server(
            self._accept,
            host,
            port,
            reuse_address=True,
            limit=self.limits.read_size,
            ssl=tls,
            ssl_handshake_timeout=self.limits.request_timeout if tls is not None else None,
        )
        self.servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        self.ports.append(bound)
        return bound

    def stop_accepting(self) -> None:
        """Take no new connections; open ones go on."""
        for server in self.servers:
            server.close()

    async def close(self) -> None:
        """Stop listening and end every open connection, streams included."""
        self.stop_accepting()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_SECONDS)
        for server in self.servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_SECONDS):
                    await server.wait_closed()
        self.servers = []

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a connection accepted elsewhere (a listener shared with gRPC hands it over)."""
        self._accept(reader, writer)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: the tasks are ours to count and cancel, and
        # asyncio's own wrapper task would log a cancelled connection as an error.
        if len(self._connections) >= self.limits.max_connections:
            writer.close()  # before reading a byte: a flood costs an accept and a close
            return
        connection = Connection(reader, writer, self.handler, self.limits, self.refusal, self.budget)
        task = asyncio.create_task(connection.run())
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
