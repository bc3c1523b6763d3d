"""One auth scenario, step by step with etcdctl, against a real etcd 3.4 and against metastore.

Every step's exit code, stdout and `Error:` line must be identical. This is also the end-to-end
test of the etcdctl flow: user add, role add, grant-permission --prefix, grant-role, auth enable
(etcdctl adds the root role itself), --user, auth disable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Proc, etcdctl, start_etcd, start_metastore

ROOT, ALICE = "--user=root:r00t-pw", "--user=alice:alice-pw"
SCENARIO: list[tuple[str, ...]] = [
    ("user", "add", "root:r00t-pw"),
    ("role", "add", "app"),
    ("role", "grant-permission", "app", "--prefix", "readwrite", "app/"),
    ("role", "grant-permission", "app", "read", "pub"),
    ("user", "add", "alice:alice-pw"),
    ("user", "grant-role", "alice", "app"),
    ("user", "grant-role", "alice", "nope"),
    ("auth", "enable"),
    ("auth", "enable"),  # again: a no-op
    ("put", "app/a", "1"),  # no user
    (ALICE, "put", "app/a", "1"),
    (ALICE, "get", "app/a"),
    (ALICE, "put", "pub", "x"),
    ("--user=alice:wrong", "get", "app/a"),
    ("--user=ghost:x", "get", "app/a"),
    (ALICE, "get", "app/", "--prefix"),
    (ALICE, "get", "app/", "--from-key"),
    (ALICE, "del", "app/a", "--prev-kv"),
    (ALICE, "user", "list"),
    (ALICE, "user", "get", "alice"),
    (ALICE, "role", "get", "app"),
    (ROOT, "user", "list"),
    (ROOT, "role", "list"),
    (ROOT, "role", "get", "app"),
    (ROOT, "user", "get", "alice"),
    (ROOT, "put", "pub", "v"),
    (ALICE, "get", "pub"),
    (ROOT, "role", "revoke-permission", "app", "pub"),
    (ALICE, "get", "pub"),
    (ROOT, "role", "revoke-permission", "app", "pub"),
    (ROOT, "user", "revoke-role", "root", "root"),
    (ROOT, "user", "delete", "root"),
    (ROOT, "role", "delete", "root"),
    (ROOT, "user", "add", "alice:again"),
    (ROOT, "role", "add", "app"),
    (ROOT, "user", "revoke-role", "alice", "other"),
    (ROOT, "user", "passwd", "alice", "--interactive=false"),
    (ALICE, "get", "app/a"),
    (ROOT, "auth", "disable"),
    ("put", "app/a", "2"),
    ("get", "app/a"),
    ("user", "delete", "alice"),
    ("role", "delete", "app"),
    ("user", "get", "alice"),
    ("role", "get", "app"),
]
STDIN = {("user", "passwd"): "new-pw\n"}


def _error(stderr: str) -> str:
    """The `Error:` line etcdctl prints (its JSON retry warnings carry timestamps)."""
    return "\n".join(line for line in stderr.splitlines() if line.startswith("Error:"))


def run(endpoint: str) -> list[tuple[str, int, str, str]]:
    out = []
    for step in SCENARIO:
        words = [w for w in step if not w.startswith("--user")]
        stdin = STDIN.get((words[0], words[1]) if len(words) > 1 else ("", ""))
        r = etcdctl(endpoint, *step, input=stdin)
        out.append((" ".join(step), r.returncode, r.stdout, _error(r.stderr)))
    return out


@pytest.mark.peer
def test_the_auth_scenario_answers_as_etcd(tmp_path: Path) -> None:
    ref: Proc = start_etcd(tmp_path / "etcd")
    try:
        want = run(ref.endpoint)
    finally:
        ref.stop()
    ours = start_metastore(tmp_path / "ms", "--bcrypt-cost", "4")
    try:
        got = run(ours.endpoint)
    finally:
        ours.stop()
    assert [w[1] for w in want].count(0) > 20  # the scenario mostly succeeds on etcd
    for w, g in zip(want, got, strict=True):
        assert g == w, f"step {w[0]!r}"
