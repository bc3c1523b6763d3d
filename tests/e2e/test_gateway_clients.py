"""etcd3gw (OpenStack's gateway client, from PyPI, unchanged) against `metastore serve`'s JSON gateway."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd3gw.client import Etcd3Client

from tests.support import free_port

from conftest import Proc, start_metastore


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, int]]:
    """One daemon for the module (each test keeps to its own keys), with the gateway on its own port."""
    port = free_port()
    data: Path = tmp_path_factory.mktemp("gw") / "data"
    p = start_metastore(data, "--listen-client-http-urls", f"http://127.0.0.1:{port}")
    yield p, port
    p.stop()


@pytest.fixture
def client(gateway: tuple[Proc, int]) -> Etcd3Client:
    return Etcd3Client(host="127.0.0.1", port=gateway[1], timeout=10)


def test_api_discovery_status_and_members(client: Etcd3Client) -> None:
    assert client.api_path == "/v3/"  # read from GET /version (etcdserver >= 3.4)
    status = client.status()
    assert status["version"] == "3.5.0" and status["leader"] == status["header"]["member_id"]
    (member,) = client.members()
    assert member["ID"] == status["header"]["member_id"] and member["clientURLs"]


def test_put_get_delete_and_prefixes(client: Etcd3Client) -> None:
    assert client.put("kv/a", "1") is True
    assert client.put("kv/b", "2") is True
    assert client.get("kv/a") == [b"1"]
    value, meta = client.get("kv/b", metadata=True)[0]
    assert value == b"2" and meta["key"] == b"kv/b" and int(meta["version"]) == 1
    assert sorted(v for v, _ in client.get_prefix("kv/")) == [b"1", b"2"]
    assert client.get("kv/missing") == []
    assert client.delete("kv/a") is True
    assert client.delete("kv/a") is False
    assert client.delete_prefix("kv/") is True
    assert client.get_prefix("kv/") == []


def test_transactions(client: Etcd3Client) -> None:
    assert client.create("txn/k", "first") is True
    assert client.create("txn/k", "again") is False  # create_revision is no longer 0
    assert client.replace("txn/k", "first", "second") is True
    assert client.replace("txn/k", "first", "third") is False
    assert client.get("txn/k") == [b"second"]


def test_lease_with_keys_refresh_and_revoke(client: Etcd3Client) -> None:
    lease = client.lease(ttl=30)
    client.put("lease/a", "1", lease=lease)
    client.put("lease/b", "2", lease=lease)
    assert 0 < lease.ttl() <= 30
    assert lease.refresh() == 30  # one request on the keep-alive stream, one answer, the end
    assert sorted(lease.keys()) == [b"lease/a", b"lease/b"]
    assert lease.revoke() is True
    assert client.get_prefix("lease/") == []


def test_watch_sees_puts_and_deletes_and_cancel_ends_it(client: Etcd3Client) -> None:
    events, cancel = client.watch("watch/k")
    seen: list[dict[str, object]] = []

    def read() -> None:
        for event in events:
            seen.append(event)
            if len(seen) == 2:
                return

    reader = threading.Thread(target=read)
    reader.start()
    # The response starts with the created reply, so the watcher exists once watch() returns.
    client.put("watch/other", "x")  # not watched: never delivered
    client.put("watch/k", "v1")
    client.delete("watch/k")
    reader.join(10)
    cancel()
    assert [e.get("type", "PUT") for e in seen] == ["PUT", "DELETE"]
    assert seen[0]["kv"]["value"] == b"v1"  # type: ignore[index]


def test_lock_is_exclusive_and_released(client: Etcd3Client) -> None:
    first = client.lock("gw-lock", ttl=30)
    second = client.lock("gw-lock", ttl=30)
    assert first.acquire() is True
    assert first.is_acquired()
    assert second.acquire() is False  # held
    assert first.refresh() == 30
    assert first.release() is True
    assert second.acquire() is True
    assert second.release() is True
