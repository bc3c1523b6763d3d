"""The import rules of docs/architecture.md, checked on the source: no circles, each room its imports.

Every import counts, wherever it sits in a module (top level, function body,
TYPE_CHECKING): a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("metastore_core", "metastore_cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "pb" in path.relative_to(ROOT).parts[1:2]:
                continue  # generated code
            out[_module_name(path)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module name path imports (ours resolved to modules, others by their top name)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], base])
            out.add(base)
            for alias in node.names:  # `from pkg import module` imports the module
                if f"{base}.{alias.name}" in MODULES:
                    out.add(f"{base}.{alias.name}")
    return {m.strip(".") for m in out}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _ours(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in MODULES and m != name}


def _third_party(name: str) -> set[str]:
    return {m.split(".")[0] for m in GRAPH[name] if m.split(".")[0] not in PACKAGES}


def _in(name: str, *rooms: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in rooms)


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(_ours(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for name in sorted(MODULES):
        if name not in index:
            visit(name)
    assert circles == []


def test_the_engine_does_no_io_framework() -> None:
    """storage/, mvcc/, engine/ and errors.py import neither grpc nor asyncio: time is passed in."""
    pure = ("metastore_core.storage", "metastore_core.mvcc", "metastore_core.engine", "metastore_core.errors")
    bad = {n: _third_party(n) & {"grpc", "asyncio"} for n in MODULES if _in(n, *pure)}
    assert {n: m for n, m in bad.items() if m} == {}


def test_the_member_speaks_no_grpc() -> None:
    bad = {n: _third_party(n) & {"grpc"} for n in MODULES if _in(n, "metastore_core.member")}
    assert {n: m for n, m in bad.items() if m} == {}


def test_layers_point_down() -> None:
    """storage < mvcc < engine < member < server < cli: nothing imports a room above its own."""
    order = [
        "metastore_core.storage",
        "metastore_core.mvcc",
        "metastore_core.engine",
        "metastore_core.member",
        "metastore_core.server",
        "metastore_cli",
    ]
    up = []
    for name in MODULES:
        mine = next((i for i, r in enumerate(order) if _in(name, r)), None)
        for dep in _ours(name):
            theirs = next((i for i, r in enumerate(order) if _in(dep, r)), None)
            if mine is not None and theirs is not None and theirs > mine:
                up.append(f"{name} -> {dep}")
            if mine is None and theirs is not None and theirs >= order.index("metastore_core.member"):
                up.append(f"{name} -> {dep}")  # errors.py and config.py sit below the member
    assert up == []


def test_nothing_reaches_around_the_node() -> None:
    """Outside member/, the member is its facade (node), its figures, the seam's types, and the
    lock/election recipes built on the facade; never the store, committer, guard or loops."""
    allowed = {
        "metastore_core.member.node",
        "metastore_core.member.figures",
        "metastore_core.member.consensus",
        "metastore_core.member.concurrency",
    }
    reach = [
        f"{n} -> {dep}"
        for n in MODULES
        if not _in(n, "metastore_core.member")
        for dep in _ours(n)
        if _in(dep, "metastore_core.member") and dep not in allowed and dep != "metastore_core.member"
    ]
    assert reach == []


def test_transport_stays_in_the_binding() -> None:
    """Servicers, layers, the method table, the status table and the figures import no grpc;
    only rpc.py turns a domain error into a gRPC status."""
    neutral = (
        "metastore_core.server.services",
        "metastore_core.server.layers",
        "metastore_core.server.methods",
        "metastore_core.server.status",
        "metastore_core.server.figures",
        "metastore_core.server.healthcheck",
        "metastore_core.server.catalog",
        "metastore_core.server.http",
    )
    bad = {n: _third_party(n) & {"grpc"} for n in MODULES if _in(n, *neutral)}
    assert {n: m for n, m in bad.items() if m} == {}
    aborts = [
        n
        for n, path in MODULES.items()
        if n != "metastore_core.server.rpc" and ".abort(" in path.read_text() and _in(n, "metastore_core")
    ]
    assert aborts == []


def test_tests_do_not_import_benchmarks() -> None:
    """Benchmarks may use tests/support.py; the arrow never runs the other way."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "benchmarks"]
    assert offenders == []
