"""Domain errors of the engine, carrying etcd's exact messages.

Clients match on these strings, so they are part of the wire contract. The
gRPC status code of each lives in one table at the edge (server/status.py);
the engine never imports grpc.
"""

from __future__ import annotations


class MetastoreError(Exception):
    """Base of every error the engine raises on purpose."""

    message = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    @property
    def text(self) -> str:
        return str(self.args[0])


# --- request shape (InvalidArgument) ---
class EmptyKey(MetastoreError):
    message = "etcdserver: key is not provided"


class KeyNotFound(MetastoreError):
    message = "etcdserver: key not found"


class ValueProvided(MetastoreError):
    message = "etcdserver: value is provided"


class LeaseProvided(MetastoreError):
    message = "etcdserver: lease is provided"


class TooManyOps(MetastoreError):
    message = "etcdserver: too many operations in txn request"


class DuplicateKey(MetastoreError):
    message = "etcdserver: duplicate key given in txn request"


class RequestTooLarge(MetastoreError):
    message = "etcdserver: request is too large"


class InvalidRequest(MetastoreError):
    """A field out of its allowed range; the message names the field."""

    message = "etcdserver: invalid request"


# --- mvcc (OutOfRange) ---
class Compacted(MetastoreError):
    message = "etcdserver: mvcc: required revision has been compacted"


class FutureRevision(MetastoreError):
    message = "etcdserver: mvcc: required revision is a future revision"


# --- lease ---
class LeaseNotFound(MetastoreError):
    message = "etcdserver: requested lease not found"


class LeaseExists(MetastoreError):
    message = "etcdserver: lease already exists"


class LeaseTTLTooLarge(MetastoreError):
    message = "etcdserver: too large lease TTL"


# --- space, health ---
class NoSpace(MetastoreError):
    message = "etcdserver: mvcc: database space exceeded"


class Corrupt(MetastoreError):
    message = "etcdserver: corrupt cluster"


class TooManyRequests(MetastoreError):
    message = "etcdserver: too many requests"


class Unavailable(MetastoreError):
    """The store cannot take writes now (I/O failure, shutting down)."""

    message = "etcdserver: server stopped"


# --- cluster and maintenance ---
class MemberNotFound(MetastoreError):
    message = "etcdserver: member not found"


class NotCapable(MetastoreError):
    message = "etcdserver: not capable"


class BadLeaderTransferee(MetastoreError):
    message = "etcdserver: bad leader transferee"
