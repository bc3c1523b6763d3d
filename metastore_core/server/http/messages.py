"""The transport-free core: a `Request` goes in, a `Response` comes out. No sockets, no asyncio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

Headers = tuple[tuple[str, str], ...]
# A streamed body is sent chunk by chunk as the iterator yields, with chunked framing.
Body = bytes | AsyncIterator[bytes]


@dataclass(frozen=True)
class Request:
    """One HTTP request with its body read whole (the shell caps its size); header names are lowercase.

    `peer` names the client as gRPC does ("ipv4:127.0.0.1:5000"); `common_name` is the CN of the
    client certificate the TLS layer verified, or "".
    """

    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Headers = ()
    body: bytes = b""
    peer: str = ""
    common_name: str = ""

    @classmethod
    def from_target(
        cls, method: str, target: str, headers: Headers = (), body: bytes = b"", **client: str
    ) -> Request:
        """Split a request target such as `/health?exclude=NOSPACE` into path and query (a bare
        `?verbose` is kept, with the value "")."""
        url = urlsplit(target)
        return cls(method, url.path, parse_qs(url.query, keep_blank_values=True), headers, body, **client)

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


@dataclass(frozen=True)
class Response:
    """A status, headers, and a body of bytes or an async iterator of chunks."""

    status: int
    headers: Headers = ()
    body: Body = b""

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain") -> Response:
        """A plain-text answer."""
        return cls(status, (("content-type", content_type),), text.encode())

    @classmethod
    def json(cls, status: int, doc: Any) -> Response:
        """A JSON answer, serialised with the standard separators (etcd's clients parse, not compare)."""
        return cls(status, (("content-type", "application/json"),), json.dumps(doc).encode())
