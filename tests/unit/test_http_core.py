"""The HTTP package's transport-free core: requests, responses, routing, and its import rules."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from metastore_core.server.http import Request, Response, Route, Router

PACKAGE = Path(__file__).resolve().parents[2] / "metastore_core" / "server" / "http"
CORE = ("messages.py", "errors.py", "router.py", "limits.py")


async def _ok(request: Request) -> Response:
    return Response.text(200, f"{request.method} {request.path}\n")


def test_request_splits_target_and_finds_headers() -> None:
    request = Request.from_target("GET", "/health?exclude=NOSPACE&exclude=CORRUPT", (("host", "x"),))
    assert (request.path, request.query) == ("/health", {"exclude": ["NOSPACE", "CORRUPT"]})
    assert request.header("Host") == "x" and request.header("accept") is None


def test_response_helpers() -> None:
    assert Response.text(503, "no\n") == Response(503, (("content-type", "text/plain"),), b"no\n")
    doc = Response.json(200, {"health": "true", "reason": ""})
    assert doc.headers == (("content-type", "application/json"),)
    assert json.loads(doc.body) == {"health": "true", "reason": ""}


async def test_router_404_405_and_trailing_slash() -> None:
    router = Router([Route("GET", "/health", _ok), Route("PUT", "/health", _ok)])
    assert (await router(Request("GET", "/health/"))).body == b"GET /health/\n"
    assert (await router(Request("GET", "/nope"))).status == 404
    refused = await router(Request("DELETE", "/health"))
    assert (refused.status, refused.body) == (405, b"Method Not Allowed\n")
    assert ("allow", "GET, PUT") in refused.headers


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_import_rules() -> None:
    # The package never needs grpc (the JSON gateway will reach the engine without it), and its
    # core stays sans-IO like h11's: no sockets, no event loop, not even the HTTP parser.
    for path in PACKAGE.glob("*.py"):
        assert "grpc" not in _imports(path), path.name
    for name in CORE:
        assert not _imports(PACKAGE / name) & {"asyncio", "socket", "h11"}, name
