"""etcdctl 3.4 against `metastore serve`: the commands users type, and what they print."""

from __future__ import annotations

import json

from conftest import Proc, etcdctl


def ok(p: Proc, *args: str, input: str | None = None) -> str:
    r = etcdctl(p.endpoint, *args, input=input)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_put_get_del(metastore: Proc) -> None:
    assert ok(metastore, "put", "foo", "bar") == "OK\n"
    assert ok(metastore, "get", "foo") == "foo\nbar\n"
    assert ok(metastore, "get", "foo", "--print-value-only") == "bar\n"
    assert ok(metastore, "del", "foo") == "1\n"
    assert ok(metastore, "get", "foo") == ""
    assert ok(metastore, "del", "foo") == "0\n"


def test_revisions_in_json(metastore: Proc) -> None:
    ok(metastore, "put", "k", "v1")
    ok(metastore, "put", "k", "v2")
    out = json.loads(ok(metastore, "get", "k", "-w", "json"))
    kv = out["kvs"][0]
    assert (kv["create_revision"], kv["mod_revision"], kv["version"]) == (2, 3, 2)
    assert out["header"]["revision"] == 3 and out["count"] == 1
    assert ok(metastore, "get", "k", "--rev=2", "--print-value-only") == "v1\n"


def test_prefix_sort_limit(metastore: Proc) -> None:
    for k, v in [("p/b", "2"), ("p/a", "3"), ("p/c", "1"), ("q", "x")]:
        ok(metastore, "put", k, v)
    assert ok(metastore, "get", "p/", "--prefix", "--keys-only").split() == ["p/a", "p/b", "p/c"]
    out = ok(metastore, "get", "p/", "--prefix", "--sort-by=VALUE", "--order=DESCEND", "--print-value-only")
    assert out.split() == ["3", "2", "1"]
    out = json.loads(ok(metastore, "get", "p/", "--prefix", "--limit=2", "-w", "json"))
    assert (len(out["kvs"]), out["more"], out["count"]) == (2, True, 3)
    assert ok(metastore, "get", "p/b", "--from-key", "--keys-only").split() == ["p/b", "p/c", "q"]


def test_txn_success_and_failure(metastore: Proc) -> None:
    ok(metastore, "put", "k", "v")
    out = ok(metastore, "txn", input='value("k") = "v"\n\nput k w\nget k\n\nput k z\n\n')
    assert out.splitlines()[0] == "SUCCESS"
    assert ok(metastore, "get", "k", "--print-value-only") == "w\n"
    out = ok(metastore, "txn", input='value("k") = "v"\n\nput k w\n\nput other 1\n\n')
    assert out.splitlines()[0] == "FAILURE"
    assert ok(metastore, "get", "other", "--print-value-only") == "1\n"


def test_compaction_then_old_revision_fails(metastore: Proc) -> None:
    for i in range(4):
        ok(metastore, "put", "k", str(i))
    assert ok(metastore, "compaction", "4") == "compacted revision 4\n"
    r = etcdctl(metastore.endpoint, "get", "k", "--rev=3")
    assert r.returncode != 0
    assert "etcdserver: mvcc: required revision has been compacted" in r.stderr
    assert ok(metastore, "get", "k", "--rev=4", "--print-value-only") == "2\n"
    r = etcdctl(metastore.endpoint, "compaction", "4")
    assert "required revision has been compacted" in r.stderr
    r = etcdctl(metastore.endpoint, "get", "k", "--rev=99")
    assert "etcdserver: mvcc: required revision is a future revision" in r.stderr


def test_endpoint_health_status_member_list(metastore: Proc) -> None:
    r = etcdctl(metastore.endpoint, "endpoint", "health")
    assert r.returncode == 0
    assert f"{metastore.endpoint} is healthy" in r.stdout + r.stderr  # etcdctl 3.4 prints it on stderr
    status = json.loads(ok(metastore, "endpoint", "status", "-w", "json"))[0]["Status"]
    assert status["leader"] == status["header"]["member_id"]
    assert status["version"].startswith("3.")
    assert status["dbSize"] > 0 and status["raftTerm"] >= 1
    members = json.loads(ok(metastore, "member", "list", "-w", "json"))
    (member,) = members["members"]
    assert member["ID"] == status["header"]["member_id"]
    assert member["clientURLs"] == [f"http://{metastore.endpoint}"]
    assert "started" in ok(metastore, "member", "list")


def test_put_with_unknown_lease(metastore: Proc) -> None:
    r = etcdctl(metastore.endpoint, "put", "k", "v", "--lease=1234")
    assert r.returncode != 0 and "etcdserver: requested lease not found" in r.stderr


def test_ignore_value_on_missing_key(metastore: Proc) -> None:
    r = etcdctl(metastore.endpoint, "put", "nokey", "--ignore-value")
    assert r.returncode != 0 and "etcdserver: key not found" in r.stderr
