"""The one table from engine errors to gRPC status codes.

Messages come from the error itself (etcd's exact strings); the code comes
from here. Anything not in the table is INTERNAL.
"""

from __future__ import annotations

import grpc

from metastore_core import errors

CODES: dict[type[errors.MetastoreError], grpc.StatusCode] = {
    errors.EmptyKey: grpc.StatusCode.INVALID_ARGUMENT,
    errors.KeyNotFound: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ValueProvided: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LeaseProvided: grpc.StatusCode.INVALID_ARGUMENT,
    errors.TooManyOps: grpc.StatusCode.INVALID_ARGUMENT,
    errors.DuplicateKey: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RequestTooLarge: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Compacted: grpc.StatusCode.OUT_OF_RANGE,
    errors.FutureRevision: grpc.StatusCode.OUT_OF_RANGE,
    errors.LeaseTTLTooLarge: grpc.StatusCode.OUT_OF_RANGE,
    errors.LeaseNotFound: grpc.StatusCode.NOT_FOUND,
    errors.LeaseExists: grpc.StatusCode.FAILED_PRECONDITION,
    errors.NoSpace: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.TooManyRequests: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Corrupt: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.NotCapable: grpc.StatusCode.UNAVAILABLE,
    errors.MemberNotFound: grpc.StatusCode.NOT_FOUND,
    errors.BadLeaderTransferee: grpc.StatusCode.FAILED_PRECONDITION,
}


def to_status(exc: errors.MetastoreError) -> tuple[grpc.StatusCode, str]:
    """(code, message) for an engine error; the most specific table row wins."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code, exc.text
    return grpc.StatusCode.INTERNAL, exc.text
