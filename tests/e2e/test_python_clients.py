"""The Python etcd clients on PyPI (etcd3, aetcd) against metastore, each in its own process."""

from __future__ import annotations

from conftest import Proc, run_client


def test_etcd3_client_kv_and_txn(metastore: Proc) -> None:
    out = run_client(
        """
        import etcd3
        c = etcd3.client(host=HOST, port=PORT)
        c.put("/app/a", "1")
        c.put("/app/b", "2")
        value, meta = c.get("/app/a")
        assert value == b"1" and meta.version == 1, meta
        assert sorted(v for v, _ in c.get_prefix("/app/")) == [b"1", b"2"]
        ok, _ = c.transaction(
            compare=[c.transactions.value("/app/a") == "1"],
            success=[c.transactions.put("/app/a", "10")],
            failure=[],
        )
        assert ok and c.get("/app/a")[0] == b"10"
        assert c.delete_prefix("/app/").deleted == 2
        status = c.status()
        print(status.version, status.leader.name)
        """,
        metastore.endpoint,
    )
    version, leader = out.split()
    assert version.startswith("3.") and leader == "default"


def test_aetcd_client(metastore: Proc) -> None:
    run_client(
        """
        import asyncio, aetcd

        async def main():
            async with aetcd.Client(host=HOST, port=PORT) as c:
                await c.put(b"k", b"v")
                got = await c.get(b"k")
                assert got is not None and got.value == b"v"
                await c.put(b"k", b"v2")
                got = await c.get(b"k")
                assert got.version == 2, got
                await c.delete(b"k")
                assert await c.get(b"k") is None
                try:
                    await c.put(b"", b"x")
                except aetcd.exceptions.InvalidArgumentError as exc:
                    assert "key is not provided" in str(exc), exc
                else:
                    raise AssertionError("empty key accepted")

        asyncio.run(main())
        """,
        metastore.endpoint,
    )
