"""The one table from domain errors to status: gRPC code, etcd's message, HTTP status.

The message is the error's own text (etcd's exact strings, errors.py); the
code comes from here, the most specific row winning. Anything not in the
table is INTERNAL. `Code` uses gRPC's numbering but no grpc import, so the
HTTP side (and metrics labels) read the same table; rpc.py turns a Code
into a grpc.StatusCode.
"""

from __future__ import annotations

import enum

from metastore_core import errors


class Code(enum.IntEnum):
    """gRPC status codes, by their wire numbers."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# Go's codes.Code String() names, by number: the label values etcd's dashboards match on.
GO_NAMES = (
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
)

# grpc-gateway's HTTPStatusFromCode, which etcd's JSON gateway answers with.
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 408,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 412,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

TABLE: dict[type[errors.MetastoreError], Code] = {
    errors.EmptyKey: Code.INVALID_ARGUMENT,
    errors.KeyNotFound: Code.INVALID_ARGUMENT,
    errors.ValueProvided: Code.INVALID_ARGUMENT,
    errors.LeaseProvided: Code.INVALID_ARGUMENT,
    errors.TooManyOps: Code.INVALID_ARGUMENT,
    errors.DuplicateKey: Code.INVALID_ARGUMENT,
    errors.RequestTooLarge: Code.INVALID_ARGUMENT,
    errors.InvalidRequest: Code.INVALID_ARGUMENT,
    errors.Malformed: Code.INVALID_ARGUMENT,
    errors.Compacted: Code.OUT_OF_RANGE,
    errors.FutureRevision: Code.OUT_OF_RANGE,
    errors.LeaseNotFound: Code.NOT_FOUND,
    errors.LeaseExists: Code.FAILED_PRECONDITION,
    errors.LeaseTTLTooLarge: Code.OUT_OF_RANGE,
    errors.NoSpace: Code.RESOURCE_EXHAUSTED,
    errors.Corrupt: Code.DATA_LOSS,
    errors.StorageFailed: Code.UNAVAILABLE,
    errors.MemoryLimit: Code.RESOURCE_EXHAUSTED,
    errors.TooManyRequests: Code.RESOURCE_EXHAUSTED,
    errors.ClientTooManyRequests: Code.RESOURCE_EXHAUSTED,
    errors.ClientRateLimited: Code.RESOURCE_EXHAUSTED,
    errors.TooManyConnections: Code.RESOURCE_EXHAUSTED,
    errors.ResponseTooLarge: Code.RESOURCE_EXHAUSTED,
    errors.RequestTimeout: Code.DEADLINE_EXCEEDED,
    errors.Stopping: Code.UNAVAILABLE,
    errors.Unavailable: Code.UNAVAILABLE,
    errors.BadLeaderTransferee: Code.FAILED_PRECONDITION,
    errors.Unimplemented: Code.UNIMPLEMENTED,
    errors.UnknownService: Code.NOT_FOUND,
    errors.TooManyToList: Code.RESOURCE_EXHAUSTED,
    errors.UserEmpty: Code.INVALID_ARGUMENT,
    errors.AuthFailed: Code.INVALID_ARGUMENT,
    errors.PermissionDenied: Code.PERMISSION_DENIED,
    errors.InvalidAuthToken: Code.UNAUTHENTICATED,
    errors.AuthOldRevision: Code.INVALID_ARGUMENT,
    errors.AuthNotEnabled: Code.FAILED_PRECONDITION,
    errors.RootUserNotExist: Code.FAILED_PRECONDITION,
    errors.RootRoleNotExist: Code.FAILED_PRECONDITION,
    errors.UserAlreadyExist: Code.FAILED_PRECONDITION,
    errors.UserNotFound: Code.FAILED_PRECONDITION,
    errors.RoleAlreadyExist: Code.FAILED_PRECONDITION,
    errors.RoleNotFound: Code.FAILED_PRECONDITION,
    errors.RoleEmpty: Code.INVALID_ARGUMENT,
    errors.RoleNotGranted: Code.FAILED_PRECONDITION,
    errors.PermissionNotGranted: Code.FAILED_PRECONDITION,
    errors.InvalidAuthMgmt: Code.INVALID_ARGUMENT,
    errors.AuthRateLimited: Code.RESOURCE_EXHAUSTED,
    errors.AdminLocalOnly: Code.PERMISSION_DENIED,
    errors.RecipeLeaseNotFound: Code.UNKNOWN,
    errors.NoLeader: Code.UNKNOWN,
    errors.NotLeader: Code.UNKNOWN,
    errors.Internal: Code.INTERNAL,
}

_CACHE: dict[type[errors.MetastoreError], Code] = {}


def code_of(exc: errors.MetastoreError) -> Code:
    """The status code of a domain error; the most specific table row wins."""
    cls = type(exc)
    code = _CACHE.get(cls)
    if code is None:
        code = next((TABLE[c] for c in cls.__mro__ if c in TABLE), Code.INTERNAL)
        _CACHE[cls] = code
    return code


def http_status(code: Code) -> int:
    return HTTP_STATUS[code]
