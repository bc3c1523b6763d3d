"""v3lock and v3election on the server, and etcdctl's client-side lock and elect."""

from __future__ import annotations

import subprocess
import threading
import time

import grpc
import pytest

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc
from metastore_core.pb.v3electionpb import v3election_pb2 as epb
from metastore_core.pb.v3electionpb import v3election_pb2_grpc
from metastore_core.pb.v3lockpb import v3lock_pb2 as lockpb
from metastore_core.pb.v3lockpb import v3lock_pb2_grpc

from conftest import Proc


def test_lock_is_exclusive_and_fifo(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch)
        l1 = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
        l2 = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
        first = lock.Lock(lockpb.LockRequest(name=b"m", lease=l1), timeout=5)
        assert first.key == b"m/%x" % l1
        got: list[bytes] = []
        waiter = threading.Thread(
            target=lambda: got.append(lock.Lock(lockpb.LockRequest(name=b"m", lease=l2)).key)
        )
        waiter.start()
        time.sleep(0.5)
        assert got == []  # still blocked behind the holder
        lock.Unlock(lockpb.UnlockRequest(key=first.key), timeout=5)
        waiter.join(5)
        assert got == [b"m/%x" % l2]


def test_lock_with_unknown_lease_is_unknown_code(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        lock = v3lock_pb2_grpc.LockStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            lock.Lock(lockpb.LockRequest(name=b"m", lease=12345), timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNKNOWN
        assert exc.value.details() == "etcdserver: requested lease not found"


def test_lock_without_lease_grants_one(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        key = v3lock_pb2_grpc.LockStub(ch).Lock(lockpb.LockRequest(name=b"m"), timeout=5).key
        lease_id = int(key.split(b"/")[1], 16)
        ttl = rpc_pb2_grpc.LeaseStub(ch).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id), timeout=5)
        assert ttl.grantedTTL == 60


def test_election_campaign_leader_proclaim_resign(metastore: Proc) -> None:
    with grpc.insecure_channel(metastore.endpoint) as ch:
        el = v3election_pb2_grpc.ElectionStub(ch)
        lease = rpc_pb2_grpc.LeaseStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            el.Leader(epb.LeaderRequest(name=b"e"), timeout=5)
        assert (exc.value.code(), exc.value.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")
        l1 = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
        l2 = lease.LeaseGrant(pb.LeaseGrantRequest(TTL=30)).ID
        lead = el.Campaign(epb.CampaignRequest(name=b"e", lease=l1, value=b"one"), timeout=5).leader
        assert el.Leader(epb.LeaderRequest(name=b"e"), timeout=5).kv.value == b"one"
        observed = el.Observe(epb.LeaderRequest(name=b"e"), timeout=10)
        assert next(observed).kv.value == b"one"
        el.Proclaim(epb.ProclaimRequest(leader=lead, value=b"uno"), timeout=5)
        assert next(observed).kv.value == b"uno"
        second = el.Campaign.future(epb.CampaignRequest(name=b"e", lease=l2, value=b"two"), timeout=10)
        time.sleep(0.3)
        assert not second.done()
        el.Resign(epb.ResignRequest(leader=lead), timeout=5)
        assert second.result().leader.key == b"e/%x" % l2
        assert next(observed).kv.value == b"two"
        observed.cancel()
        stale = epb.ProclaimRequest(leader=lead, value=b"x")
        with pytest.raises(grpc.RpcError) as exc:
            el.Proclaim(stale, timeout=5)
        assert (exc.value.code(), exc.value.details()) == (grpc.StatusCode.UNKNOWN, "election: not leader")


def test_etcdctl_lock_serialises_holders(metastore: Proc) -> None:
    # etcdctl lock is client-side: a session lease, a txn and a watch on the key before ours.
    env = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}
    cmd = ["etcdctl", f"--endpoints={metastore.endpoint}", "lock", "jobs"]
    holder = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    second = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith("jobs/")
        second = subprocess.Popen([*cmd, "echo", "second"], stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(1.0)
        assert second.poll() is None  # blocked while the first holds the lock
        holder.terminate()  # etcdctl lets go of the lock on SIGTERM
        out, _ = second.communicate(timeout=15)
        assert second.returncode == 0 and out.strip() == "second"
    finally:
        for p in (holder, second):
            if p is None:
                continue
            if p.poll() is None:
                p.kill()
            p.wait(10)
