"""The figures tell the truth: `metastore stats` and /metrics count watchers, streams and sizes."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families
from reliability_kit import stats

from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.pb.etcdserverpb import rpc_pb2_grpc

from conftest import Proc


def metrics(p: Proc) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def _watch_requests(n: int, stop: list[bool]) -> Iterator[pb.WatchRequest]:
    for i in range(n):
        yield pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w%d" % i))
    while not stop:
        time.sleep(0.05)


def test_watchers_streams_and_sizes_are_counted_truly(metastore: Proc, tmp_path: Path) -> None:
    stop: list[bool] = []
    with grpc.insecure_channel(metastore.endpoint) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in range(200):
            kv.Put(pb.PutRequest(key=b"k%03d" % i, value=b"v" * 200), timeout=10)
        kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"), timeout=10)
        streams = [rpc_pb2_grpc.WatchStub(ch).Watch(_watch_requests(5, stop)) for _ in range(3)]
        for s in streams:
            assert all(next(s).created for _ in range(5))
        try:
            s = stats(metastore.endpoint)
            assert (s.watchers, s.watch_streams) == (15, 3)
            m = metrics(metastore)
            assert m["etcd_debugging_mvcc_watcher_total"] == 15
            assert m["etcd_debugging_mvcc_watch_stream_total"] == 3
            status = rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=10)
            # in use is LevelDB's own estimate of live bytes, never the total size
            assert 0 < m["etcd_mvcc_db_total_size_in_use_in_bytes"] <= m["etcd_mvcc_db_total_size_in_bytes"]
            assert status.dbSizeInUse <= status.dbSize
            assert m["etcd_server_proposals_applied_total"] == status.raftIndex == 201
            assert m["etcd_debugging_mvcc_keys_total"] == 0 and s.key_count == 0
        finally:
            stop.append(True)
            for st in streams:
                st.cancel()
