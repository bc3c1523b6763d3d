"""Helpers for the reliability tests: admin stats, health, the test-only fault service."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metastore_core.pb.metastore.admin.v1 import admin_pb2, admin_pb2_grpc

from conftest import Proc, start_metastore

FAULTS = "/metastore.testing.Faults/"


def start_with_faults(data_dir: Path, *extra: str, port: int | None = None) -> Proc:
    """A daemon with the test-only fault service (flag + environment, both required)."""
    os.environ["METASTORE_TEST_FAULTS"] = "1"
    try:
        return start_metastore(data_dir, "--test-faults", *extra, port=port)
    finally:
        del os.environ["METASTORE_TEST_FAULTS"]


def stats(endpoint: str) -> admin_pb2.GetStatsResponse:
    with grpc.insecure_channel(endpoint) as ch:
        return admin_pb2_grpc.AdminStub(ch).GetStats(admin_pb2.GetStatsRequest(), timeout=10)


def panic_call(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(
        FAULTS + "Panic",
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )


def panic_stream_call(ch: grpc.Channel) -> grpc.UnaryStreamMultiCallable:
    return ch.unary_stream(
        FAULTS + "PanicStream",
        request_serializer=empty_pb2.Empty.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )


def sleep_call(ch: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(
        FAULTS + "Sleep",
        request_serializer=wrappers_pb2.DoubleValue.SerializeToString,
        response_deserializer=empty_pb2.Empty.FromString,
    )


def health_check(endpoint: str, service: str = "") -> int:
    with grpc.insecure_channel(endpoint) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(resp.status)


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
