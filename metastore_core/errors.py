"""Domain errors: every refusal the daemon gives, carrying etcd's exact messages.

Clients match on these strings, so they are part of the wire contract. The
status code of each (gRPC code, HTTP status) lives in one table at the edge
(server/status.py); nothing here knows a transport. A test checks that every
class below has a row there.
"""

from __future__ import annotations


class MetastoreError(Exception):
    """Base of every error raised on purpose; `message` is the default text."""

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


class Malformed(MetastoreError):
    """The request bytes did not decode (etcd's Go server words it this way)."""

    message = "grpc: error unmarshalling request"


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


# --- the write gate: space, integrity, storage, memory ---
class NoSpace(MetastoreError):
    message = "etcdserver: mvcc: database space exceeded"


class Corrupt(MetastoreError):
    message = "etcdserver: corrupt cluster"


class StorageFailed(MetastoreError):
    """A batch write failed: nothing of it was acknowledged, and writes stay refused."""

    def __init__(
        self,
        cause: object,
        remedy: str = "there is space again and the alarm is disarmed (etcdctl alarm disarm)",
    ) -> None:
        super().__init__(f"etcdserver: storage failed ({cause}); writes are refused until {remedy}")


class MemoryLimit(MetastoreError):
    """Resident memory reached --max-memory: writes that add data wait until it falls."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"etcdserver: memory limit reached: {limit} bytes (--max-memory); "
            "writes are refused until memory falls"
        )


# --- resource limits and lifecycle ---
class TooManyRequests(MetastoreError):
    """More unary calls in flight than --max-concurrent-requests."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"etcdserver: too many requests: limit of {limit} concurrent requests "
            "reached (--max-concurrent-requests)"
        )


class ClientTooManyRequests(MetastoreError):
    """One client has more unary calls in flight than --max-client-requests."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"etcdserver: too many requests from this client: limit of {limit} concurrent requests "
            "per client reached (--max-client-requests)"
        )


class ClientRateLimited(MetastoreError):
    """One client called faster than --client-rate allows (its token bucket is empty)."""

    def __init__(self, rate: float) -> None:
        super().__init__(
            f"etcdserver: too many requests from this client: limit of {rate:g} requests per second "
            "per client reached (--client-rate)"
        )


class TooManyConnections(MetastoreError):
    """A call on a connection opened while the daemon held --max-connections client connections."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"etcdserver: too many connections: limit of {limit} client connections reached "
            "(--max-connections)"
        )


class ResponseTooLarge(MetastoreError):
    """A reply would exceed --max-response-bytes (etcd's gRPC refuses replies over its send limit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"etcdserver: response is too large: more than {limit} bytes (--max-response-bytes); "
            "ask for less (limit, keys_only, count_only) or page through the range"
        )


class RequestTimeout(MetastoreError):
    message = "etcdserver: request timed out"


class Stopping(MetastoreError):
    """The daemon is shutting down; clients retry elsewhere or after the restart."""

    message = "etcdserver: server stopped"


class Unavailable(MetastoreError):
    """A transient state a client should retry (the request was not applied)."""

    message = "etcdserver: request aborted"


# --- cluster and maintenance ---
class BadLeaderTransferee(MetastoreError):
    message = "etcdserver: bad leader transferee"


class Unimplemented(MetastoreError):
    """A call this daemon does not serve; the message says why."""

    message = "metastore: not implemented"


class UnknownService(MetastoreError):
    """grpc.health.v1: Check of a name that is not served."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown service {name!r}")


class TooManyToList(MetastoreError):
    """grpc.health.v1: List answers at most this many names."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} services to list")


# --- auth (etcd's rpctypes strings; codes in server/status.py) ---
class UserEmpty(MetastoreError):
    """Auth is on and the request carries no user (no token, no client certificate)."""

    message = "etcdserver: user name is empty"


class AuthFailed(MetastoreError):
    message = "etcdserver: authentication failed, invalid user ID or password"


class PermissionDenied(MetastoreError):
    message = "etcdserver: permission denied"


class InvalidAuthToken(MetastoreError):
    message = "etcdserver: invalid auth token"


class AuthOldRevision(MetastoreError):
    """The token's auth revision is older than the auth state the request met at apply time."""

    message = "etcdserver: revision of auth store is old"


class AuthNotEnabled(MetastoreError):
    message = "etcdserver: authentication is not enabled"


class RootUserNotExist(MetastoreError):
    message = "etcdserver: root user does not exist"


class RootRoleNotExist(MetastoreError):
    message = "etcdserver: root user does not have root role"


class UserAlreadyExist(MetastoreError):
    message = "etcdserver: user name already exists"


class UserNotFound(MetastoreError):
    message = "etcdserver: user name not found"


class RoleAlreadyExist(MetastoreError):
    message = "etcdserver: role name already exists"


class RoleNotFound(MetastoreError):
    message = "etcdserver: role name not found"


class RoleEmpty(MetastoreError):
    message = "etcdserver: role name is empty"


class RoleNotGranted(MetastoreError):
    message = "etcdserver: role is not granted to the user"


class PermissionNotGranted(MetastoreError):
    message = "etcdserver: permission is not granted to the role"


class InvalidAuthMgmt(MetastoreError):
    """Deleting root, revoking root's root role or deleting role root while auth is on."""

    message = "etcdserver: invalid auth management"


class AuthRateLimited(MetastoreError):
    """Too many Authenticate calls from one address: each costs a bcrypt check."""

    message = "etcdserver: too many authentication attempts from this address; retry later"


class AdminLocalOnly(MetastoreError):
    """The Admin service while auth is off: loopback callers only."""

    message = (
        "metastore: the admin service answers only loopback callers while auth is off; "
        "run the command on the daemon's host, or enable auth and call it as root"
    )


# --- lock and election: etcd answers these with the raw error (code Unknown) ---
class RecipeLeaseNotFound(MetastoreError):
    message = "etcdserver: requested lease not found"


class NoLeader(MetastoreError):
    message = "election: no leader"


class NotLeader(MetastoreError):
    message = "election: not leader"


# --- the catch-all for bugs ---
class Internal(MetastoreError):
    """An unexpected exception in a handler, logged and counted by the recovery layer."""

    message = "internal server error: panic recovered"
