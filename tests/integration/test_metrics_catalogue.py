"""/metrics on a live daemon: etcd's names with etcd's meaning, checked by promtool.

One in-process daemon on LevelDB takes a known set of requests; the scrape must pass
`promtool check metrics` (but for the names etcd itself spells against its conventions) and
count exactly what was done."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metastore_core.config import Config
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc as rpc
from metastore_core.server.app import Server
from metastore_core.server.figures import ETCD_SPELLINGS

from conftest import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def one(m: Samples, metric: str, /, **labels: str) -> float:
    return m[metric, frozenset(labels.items())]


def promtool_problems(text: str) -> list[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: tests/run.sh installs it from Debian's prometheus")
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert (r.returncode == 0) == (not problems), (r.returncode, problems)
    return problems


async def drive(endpoint: str) -> None:
    """3 puts, a range, a txn (put + range), a delete, an oversize put, a lease, defrag, hash,
    hashkv, a snapshot."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        kv, m = rpc.KVStub(ch), rpc.MaintenanceStub(ch)
        for i in range(3):
            await kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"))
        await kv.Range(pb.RangeRequest(key=b"k0"))
        await kv.Txn(
            pb.TxnRequest(
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"1")),
                    pb.RequestOp(request_range=pb.RangeRequest(key=b"t")),
                ]
            )
        )
        await kv.DeleteRange(pb.DeleteRangeRequest(key=b"k0"))
        try:  # over --max-request-bytes, under the transport's --max-recv-bytes: refused, counted
            big = [
                pb.RequestOp(request_put=pb.PutRequest(key=b"b%d" % i, value=bytes(900 << 10)))
                for i in (1, 2)
            ]
            await kv.Txn(pb.TxnRequest(success=big))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        lease = rpc.LeaseStub(ch)
        await lease.LeaseRevoke(
            pb.LeaseRevokeRequest(ID=(await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))).ID)
        )
        await m.Defragment(pb.DefragmentRequest())
        await m.Hash(pb.HashRequest())
        await m.HashKV(pb.HashKVRequest())
        async for _ in m.Snapshot(pb.SnapshotRequest()):
            pass


async def test_the_catalogue_counts_what_was_done_and_passes_promtool(tmp_path: Path) -> None:
    server = Server(
        Config(
            data_dir=tmp_path / "data",
            listen_client_urls=[f"http://127.0.0.1:{free_port()}"],
            listen_metrics_urls=[f"http://127.0.0.1:{free_port()}"],
        )
    )
    await server.start()
    assert server.http is not None
    port = server.http.ports[0]
    try:
        await drive(f"127.0.0.1:{server.ports[0]}")
        _, text = await asyncio.to_thread(get, port, "/metrics")
        problems = promtool_problems(text)
        assert {p.split()[0] for p in problems} <= ETCD_SPELLINGS, problems
        m = samples(text)
        # etcd_mvcc_*: a plain Range or Put counts once, ops inside a txn each, the txn once
        assert one(m, "etcd_mvcc_put_total") == 4
        assert one(m, "etcd_mvcc_range_total") == 2
        assert one(m, "etcd_mvcc_delete_total") == 1
        assert one(m, "etcd_mvcc_txn_total") == 1
        assert one(m, "metastore_oversize_requests_total") == 1
        # every synced batch is one fsync and one backend commit
        commits = one(m, "etcd_disk_wal_fsync_duration_seconds_count")
        assert commits >= 6 and commits == one(m, "etcd_disk_backend_commit_duration_seconds_count")
        assert one(m, "etcd_disk_wal_fsync_duration_seconds_bucket", le="+Inf") == commits
        for name in (
            "etcd_disk_backend_defrag_duration_seconds_count",
            "etcd_disk_backend_snapshot_duration_seconds_count",
            "etcd_mvcc_hash_duration_seconds_count",
            "etcd_mvcc_hash_rev_duration_seconds_count",
        ):
            assert one(m, name) == 1, name
        assert (
            one(m, "etcd_debugging_lease_granted_total") == one(m, "etcd_debugging_lease_revoked_total") == 1
        )
        assert one(m, "etcd_network_client_grpc_received_bytes_total") > 0
        assert one(m, "etcd_network_client_grpc_sent_bytes_total") > one(
            m, "etcd_disk_backend_snapshot_duration_seconds_sum"
        )
        member = f"{server.node.figures.member_id:x}" if server.node else ""
        assert one(m, "etcd_server_id", server_id=member) == 1
        assert one(m, "etcd_cluster_version", cluster_version="3.5.0") == 1
        assert one(m, "etcd_server_is_learner") == 0 and one(m, "etcd_server_leader_changes_seen_total") == 1
        assert (
            one(m, "etcd_server_proposals_pending") == 0 and one(m, "etcd_server_proposals_failed_total") == 0
        )
        assert one(m, "etcd_debugging_mvcc_slow_watcher_total") == 0
        names = {name for name, _ in m}
        assert not names & {"etcd_debugging_lease_total", "etcd_server_health_success_total"}  # not etcd's

        # health answers are counted as etcd counts them, per request and per check
        assert (await asyncio.to_thread(get, port, "/health"))[0] == 200
        assert (await asyncio.to_thread(get, port, "/readyz"))[0] == 200
        m = samples((await asyncio.to_thread(get, port, "/metrics"))[1])
        assert one(m, "etcd_server_health_success") == 1 and one(m, "etcd_server_health_failures") == 0
        assert one(m, "etcd_server_healthchecks_total", type="readyz", name="storage", status="success") == 1
        assert one(m, "etcd_server_healthcheck", type="readyz", name="linearizable_read") == 1
    finally:
        await server.stop()
