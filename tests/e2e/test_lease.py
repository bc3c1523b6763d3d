"""Leases end to end: etcdctl, a Python client (aetcd), expiry with watchers, restarts."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc, etcdctl, run_client, start_metastore

GRANTED = re.compile(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)")


def ctl(endpoint: str, *args: str) -> str:
    r = etcdctl(endpoint, *args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def grant(endpoint: str, ttl: int) -> str:
    m = GRANTED.search(ctl(endpoint, "lease", "grant", str(ttl)))
    assert m, "no lease id in etcdctl output"
    return m.group(1)


def remaining(endpoint: str, lease: str) -> int:
    out = ctl(endpoint, "lease", "timetolive", lease)
    m = re.search(r"remaining\((-?\d+)s\)", out)
    assert m, out
    return int(m.group(1))


def test_etcdctl_lease_commands(shared_metastore: Proc) -> None:
    ep = shared_metastore.endpoint
    lease = grant(ep, 30)
    ctl(ep, "put", "--lease=" + lease, "k1", "v")
    ctl(ep, "put", "--lease=" + lease, "k2", "v")
    out = ctl(ep, "lease", "timetolive", "--keys", lease)
    assert re.fullmatch(
        rf"lease {lease} granted with TTL\(30s\), remaining\((29|30)s\), attached keys\(\[k1 k2\]\)\n", out
    ), out
    listed = ctl(ep, "lease", "list").splitlines()
    assert listed[0] == f"found {len(listed) - 1} leases" and lease in listed[1:]
    assert ctl(ep, "lease", "keep-alive", "--once", lease) == f"lease {lease} keepalived with TTL(30)\n"
    assert ctl(ep, "lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert ctl(ep, "get", "k", "--prefix") == ""
    assert ctl(ep, "lease", "timetolive", lease) == f"lease {lease} already expired\n"
    # Unknown leases, as etcd answers them.
    r = etcdctl(ep, "lease", "keep-alive", "--once", "1234")
    assert r.returncode != 0 and "Error: etcdserver: requested lease not found" in r.stderr
    r = etcdctl(ep, "lease", "revoke", "1234")
    assert r.returncode == 1
    assert "Error: failed to revoke lease (etcdserver: requested lease not found)" in r.stderr
    r = etcdctl(ep, "put", "--lease=1234", "k", "v")
    assert r.returncode == 1 and "Error: etcdserver: requested lease not found" in r.stderr


def test_expiry_deletes_keys_at_one_revision_and_watchers_see_it(shared_metastore: Proc) -> None:
    with grpc.insecure_channel(shared_metastore.endpoint) as ch:
        kv, leases = rpc_pb2_grpc.KVStub(ch), rpc_pb2_grpc.LeaseStub(ch)
        t_sent = time.monotonic()  # the server starts the TTL after this
        lease = leases.LeaseGrant(pb.LeaseGrantRequest(TTL=1)).ID  # raised to 2 s
        for k in (b"e/a", b"e/b", b"e/c"):
            kv.Put(pb.PutRequest(key=k, value=b"v", lease=lease))
        kv.Put(pb.PutRequest(key=b"e/keep", value=b"v"))
        before = kv.Range(pb.RangeRequest(key=b"e/")).header.revision
        done = threading.Event()

        def requests() -> Iterator[pb.WatchRequest]:
            yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"e/", range_end=b"e0"))
            done.wait(30)  # keep the send side open: a half-closed watch stream ends

        watch = rpc_pb2_grpc.WatchStub(ch).Watch(requests())
        assert next(watch).created
        resp = next(watch)
        lateness = time.monotonic() - t_sent - 2.0
        done.set()
        watch.cancel()
        assert sorted(e.kv.key for e in resp.events) == [b"e/a", b"e/b", b"e/c"]
        assert {e.type for e in resp.events} == {1}  # DELETE
        assert {e.kv.mod_revision for e in resp.events} == {before + 1}
        assert lateness >= 0  # never early
        assert lateness < 2.0, lateness  # generous: CI machines are slow
        after = kv.Range(pb.RangeRequest(key=b"e/", range_end=b"e0"))
        assert [x.key for x in after.kvs] == [b"e/keep"]
        assert after.header.revision == before + 1
        old = kv.Range(pb.RangeRequest(key=b"e/", range_end=b"e0", revision=before))
        assert len(old.kvs) == 4  # history below the expiry revision is still there
        ttl = leases.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease))
        assert ttl.TTL == -1
        ka = list(leases.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)])))
        assert [(x.ID, x.TTL) for x in ka] == [(lease, 0)]


def test_keep_alive_keeps_a_short_lease_alive(shared_metastore: Proc) -> None:
    ep = shared_metastore.endpoint
    lease = grant(ep, 2)
    ctl(ep, "put", "--lease=" + lease, "ka", "v")
    proc = subprocess.Popen(
        ["etcdctl", f"--endpoints={ep}", "lease", "keep-alive", lease],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
    )
    try:
        time.sleep(2.5)  # more than the TTL
        assert ctl(ep, "get", "ka", "--print-value-only") == "v\n"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert out.count(f"lease {lease} keepalived with TTL(2)") >= 2
    ctl(ep, "lease", "revoke", lease)


def test_negative_lease_ids_are_invalid_argument(shared_metastore: Proc) -> None:
    with grpc.insecure_channel(shared_metastore.endpoint) as ch:
        leases = rpc_pb2_grpc.LeaseStub(ch)
        calls = [
            lambda: leases.LeaseGrant(pb.LeaseGrantRequest(ID=-1, TTL=10)),
            lambda: leases.LeaseRevoke(pb.LeaseRevokeRequest(ID=-1)),
            lambda: leases.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=-1)),
            lambda: list(leases.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=-1)]))),
            lambda: rpc_pb2_grpc.KVStub(ch).Put(pb.PutRequest(key=b"k", lease=-1)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "lease" in (info.value.details() or "")


def test_aetcd_lease_api(shared_metastore: Proc) -> None:
    run_client(
        """
        import asyncio, aetcd

        async def main():
            async with aetcd.Client(host=HOST, port=PORT) as c:
                lease = await c.lease(20)
                assert lease.ttl == 20 and lease.id > 0
                await c.put(b"py/a", b"1", lease=lease)
                await c.put(b"py/b", b"2", lease=lease.id)
                assert await lease.granted_ttl() == 20
                assert 18 <= await lease.remaining_ttl() <= 20
                assert sorted(await lease.keys()) == [b"py/a", b"py/b"]
                replies = [r async for r in c.leasestub.LeaseKeepAlive(
                    [aetcd.rpc.LeaseKeepAliveRequest(ID=lease.id)])]
                assert replies[0].TTL == 20
                await lease.refresh()
                try:
                    await c.lease(5, lease_id=lease.id)
                except aetcd.exceptions.DuplicateLeaseError:
                    pass
                else:
                    raise AssertionError("duplicate lease id accepted")
                await lease.revoke()
                assert await c.get(b"py/a") is None
                info = await c.get_lease_info(lease.id)
                assert info.TTL == -1
                ids = {x.ID for x in (await c.leasestub.LeaseLeases(aetcd.rpc.LeaseLeasesRequest())).leases}
                assert lease.id not in ids

        asyncio.run(main())
        """,
        shared_metastore.endpoint,
    )


def test_leases_survive_restart_with_their_remaining_ttl(tmp_path: Path) -> None:
    data = tmp_path / "d"
    flags = ("--lease-checkpoint-interval", "0.5")
    p = start_metastore(data, *flags)
    try:
        t0 = time.monotonic()
        long = grant(p.endpoint, 60)
        ctl(p.endpoint, "put", "--lease=" + long, "r/k", "v")
        time.sleep(3.0)  # a few checkpoints happen meanwhile
        p.kill()  # crash: only the periodic checkpoint is on disk
        up_for = time.monotonic() - t0
        p = start_metastore(data, *flags)
        t_ready = time.monotonic()
        left = remaining(p.endpoint, long)
        # Never shorter than what was left at the kill (downtime is not counted, as in etcd),
        # and not the full TTL again: a restart without a checkpoint would answer 60.
        lower = int(60 - up_for - (time.monotonic() - t_ready)) - 1
        assert lower <= left <= 59, (lower, left)
        out = ctl(p.endpoint, "lease", "timetolive", "--keys", long)
        assert "attached keys([r/k])" in out
        short = grant(p.endpoint, 6)
        ctl(p.endpoint, "put", "--lease=" + short, "r/short", "v")
        with grpc.insecure_channel(p.endpoint) as ch:
            hold = threading.Event()

            def requests() -> Iterator[pb.LeaseKeepAliveRequest]:
                yield pb.LeaseKeepAliveRequest(ID=int(long, 16))
                hold.wait(30)

            stream = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(requests())
            assert next(stream).TTL == 60
            time.sleep(1.5)
            assert p.stop() == 0  # graceful: every lease is checkpointed exactly
            assert list(stream) == []  # the open keep-alive stream ended with status OK
            hold.set()
        p = start_metastore(data, *flags)
        left = remaining(p.endpoint, short)
        assert 1 <= left <= 5, left  # <= 4.5 s were left: at most ceil(4.5) + 1 s, not 6 again
        assert ctl(p.endpoint, "get", "r/short", "--print-value-only") == "v\n"
        assert ctl(p.endpoint, "get", "r/k", "--print-value-only") == "v\n"
    finally:
        p.stop()
