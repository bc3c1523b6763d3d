"""Exception recovery, end to end: injected handler failures never take the daemon down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from reliability_kit import http_get, panic_call, panic_stream_call, start_with_faults, stats

from metastore_core.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

from conftest import start_metastore

PANIC = "internal server error: panic recovered"


def test_thousand_injected_panics_counted_and_survived(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data")
    try:
        pid = p.pid
        with grpc.insecure_channel(p.endpoint) as ch:
            call = panic_call(ch)

            def one(_: int) -> tuple[grpc.StatusCode, str]:
                try:
                    call(empty_pb2.Empty(), timeout=10)
                except grpc.RpcError as exc:
                    return exc.code(), exc.details()
                return grpc.StatusCode.OK, ""

            with ThreadPoolExecutor(16) as pool:
                results = list(pool.map(one, range(1000)))
            assert results == [(grpc.StatusCode.INTERNAL, PANIC)] * 1000
            # the next request succeeds, in the same process
            kv = rpc_pb2_grpc.KVStub(ch)
            kv.Put(rpc_pb2.PutRequest(key=b"after", value=b"ok"), timeout=5)
            assert kv.Range(rpc_pb2.RangeRequest(key=b"after"), timeout=5).kvs[0].value == b"ok"
        assert p.proc.poll() is None and p.pid == pid
        assert stats(p.endpoint).panic_count == 1000
        status, body = http_get(p.metrics_port, "/metrics")
        assert status == 200
        assert "metastore_panic_total 1000.0" in body
        assert (
            'grpc_server_handled_total{grpc_code="Internal",grpc_method="Panic",'
            'grpc_service="metastore.testing.Faults",grpc_type="unary"} 1000.0' in body
        )
        assert p.output().count("panic recovered in /metastore.testing.Faults/Panic") == 1000
        assert "method=/metastore.testing.Faults/Panic" in p.output()  # the request's context, a field
        assert "Traceback" in p.output()
    finally:
        assert p.stop() == 0


def test_stream_panic_becomes_internal_after_sent_messages(tmp_path: Path) -> None:
    p = start_with_faults(tmp_path / "data")
    try:
        with grpc.insecure_channel(p.endpoint) as ch:
            got = []
            with pytest.raises(grpc.RpcError) as info:
                for msg in panic_stream_call(ch)(empty_pb2.Empty(), timeout=5):
                    got.append(msg)
            assert len(got) == 1
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert info.value.details() == PANIC
        assert stats(p.endpoint).panic_count == 1
    finally:
        assert p.stop() == 0


def test_fault_service_unreachable_without_env(tmp_path: Path) -> None:
    # the hidden flag alone does not register the fault service
    p = start_metastore(tmp_path / "data", "--test-faults")
    try:
        with grpc.insecure_channel(p.endpoint) as ch, pytest.raises(grpc.RpcError) as info:
            panic_call(ch)(empty_pb2.Empty(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "TEST FAULT" not in p.output()
    finally:
        p.stop()


def test_validation_errors_counted(tmp_path: Path) -> None:
    p = start_metastore(tmp_path / "data")
    try:
        with grpc.insecure_channel(p.endpoint) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            bad = [
                rpc_pb2.PutRequest(key=b""),
                rpc_pb2.PutRequest(key=b"k" * 1537, value=b"v"),
                rpc_pb2.PutRequest(key=b"k", value=b"v" * ((1 << 20) + 1)),
                rpc_pb2.PutRequest(key=b"k", lease=-1),
            ]
            for r in bad:
                with pytest.raises(grpc.RpcError) as info:
                    kv.Put(r, timeout=5)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as info:
                kv.Range(rpc_pb2.RangeRequest(key=b"k", sort_target=99), timeout=5)
            assert "sort_target" in (info.value.details() or "")
            with pytest.raises(grpc.RpcError) as info:
                kv.Range(rpc_pb2.RangeRequest(key=b"k", revision=-1), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # nothing was written
            assert kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=5).count == 0
        s = stats(p.endpoint)
        assert s.validation_error_count == 6
        assert s.panic_count == 0
        _, body = http_get(p.metrics_port, "/metrics")
        assert "metastore_validation_errors_total 6.0" in body
    finally:
        p.stop()
