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
