"""What one client may cost an HTTP port: bytes, seconds and connections."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps for one HTTP port; the defaults suit a metrics and health port facing probes and scanners.

    Worst-case memory is about `max_connections` x (socket buffer + head + body), ~32 MiB by default.
    """

    # Request line plus headers; above it the answer is 431 and the connection closes.
    max_header_bytes: int = 16 << 10
    # The metrics port takes no bodies; a JSON gateway would pass a larger cap.
    max_body_bytes: int = 64 << 10
    # Head and body must arrive within this, counted from accept (or, on a keep-alive
    # connection, from the first byte of the next request): trickling senders are cut off.
    request_timeout: float = 10.0
    # How long a kept-alive connection may wait for its next request.
    idle_timeout: float = 5.0
    # A client must take each written chunk within this, or it is dropped.
    send_timeout: float = 10.0
    # Connections beyond this are closed as soon as they are accepted.
    max_connections: int = 256
    # Bytes asked of the socket per read; also the stream reader's buffer limit.
    read_size: int = 16 << 10
    # Request-body bytes all connections together may hold at once (0: only the per-request
    # cap); past it a request is refused with 503, so many large bodies at once cannot
    # exhaust memory while each stays under max_body_bytes.
    max_bodies_bytes: int = 0


class BodyBudget:
    """The request-body bytes a port's connections hold at once, against `Limits.max_bodies_bytes`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        """Count n more bytes, unless that passes the limit (then nothing is counted)."""
        if self.limit and self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n
