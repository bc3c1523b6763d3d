"""The member's auth door: passwords checked and hashed off the event loop, tokens, auth commands.

bcrypt costs ~60 ms at cost 10 and releases the GIL, so it runs in threads, at most
`BCRYPT_THREADS` at once, and Authenticate is rate-limited per client address so that it cannot
be used to burn the CPU. Passwords are hashed before proposing: the log, the store and the logs
never hold one. Auth changes go through the write path like any other command; the member-local
consequences (tokens of a deleted user, all simple tokens on disable) follow once they applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import bcrypt

from metastore_core import errors
from metastore_core.engine.auth import AuthStore
from metastore_core.engine.entry import AuthInfo, Command
from metastore_core.member.tokens import TokenProvider
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.peers import peer_host

BCRYPT_THREADS = 2  # bcrypt work at once: the machine's cores, never the whole thread pool
BCRYPT_RATE = 0.25  # seconds of password checking per second per client address (a quarter core) ...
BCRYPT_BURST = 2.0  # ... after a burst of this many seconds' worth
MAX_PASSWORD_BYTES = 72  # bcrypt's limit: longer passwords are refused, never truncated
# A hash to check against when the user does not exist, so the answer takes as long either way.
_DUMMY_HASH = bcrypt.hashpw(b"metastore", bcrypt.gensalt(4))


class RateLimit:
    """A budget of password-check time per client address: `rate` seconds of bcrypt per second,
    up to `burst` saved. Charging the time a check took (not a count of calls) keeps the limit
    right whatever --bcrypt-cost is: at cost 10 (~60 ms) the defaults allow a burst of about 30
    logins, then about 4 a second, from one address."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (seconds left, at)

    def _left(self, host: str, now: float) -> float:
        left, at = self._buckets.get(host, (self.burst, now))
        return min(self.burst, left + (now - at) * self.rate)

    def admit(self, host: str) -> bool:
        """May host start a password check now?"""
        now = self.clock()
        if len(self._buckets) > 10_000:  # forget full buckets: they equal a fresh one
            self._buckets = {h: v for h, v in self._buckets.items() if self._left(h, now) < self.burst}
        return self._left(host, now) > 0

    def charge(self, host: str, seconds: float) -> None:
        now = self.clock()
        self._buckets[host] = (self._left(host, now) - seconds, now)


def check_password_length(password: str) -> bytes:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        raise errors.InvalidRequest(f"etcdserver: password is longer than {MAX_PASSWORD_BYTES} bytes")
    return raw


class Auth:
    """Authenticate, the auth commands and reads, and who a token or certificate names."""

    def __init__(
        self,
        store: AuthStore,
        tokens: TokenProvider,
        write: Callable[[Command, AuthInfo | None], Awaitable[Any]],
        bcrypt_cost: int,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self._write = write
        self.bcrypt_cost = bcrypt_cost
        self.limit = RateLimit(BCRYPT_RATE, BCRYPT_BURST)
        self._bcrypt = asyncio.Semaphore(BCRYPT_THREADS)
        self.refused = 0  # Authenticate calls refused by the rate limit

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    # ------------------------------------------------------------------ who is calling
    def token_info(self, token: str) -> AuthInfo:
        """Who a token names; a token that names no one is refused (even with auth off, as etcd)."""
        info = self.tokens.info(token, self.store.revision)
        if info is None:
            raise errors.InvalidAuthToken()
        return info

    def cert_info(self, common_name: str) -> AuthInfo | None:
        """--client-cert-auth: the verified certificate's CN is the user, when no token is sent."""
        if not common_name:
            return None
        return AuthInfo(common_name, self.store.revision)

    # ------------------------------------------------------------------ Authenticate
    async def authenticate(self, r: pb.AuthenticateRequest, peer: str) -> pb.AuthenticateResponse:
        if not self.enabled:
            raise errors.AuthNotEnabled()
        host = peer_host(peer)
        if not self.limit.admit(host):
            self.refused += 1
            raise errors.AuthRateLimited()
        password = check_password_length(r.password)
        while True:
            revision = self.store.revision
            user = self.store.users.get(r.name)
            usable = user is not None and not user.options.no_password and bool(user.password)
            hashed = user.password if usable and user is not None else _DUMMY_HASH
            async with self._bcrypt:
                t0 = time.monotonic()
                ok = await asyncio.to_thread(bcrypt.checkpw, password, hashed)
                self.limit.charge(host, time.monotonic() - t0)
            if not (ok and usable):
                raise errors.AuthFailed()
            if not self.enabled:
                raise errors.AuthNotEnabled()
            if self.store.revision == revision:  # nothing changed while bcrypt ran (etcd retries too)
                break
        resp = pb.AuthenticateResponse(token=self.tokens.assign(r.name, revision))
        return resp

    # ------------------------------------------------------------------ changes
    async def change(self, command: Command, auth: AuthInfo | None) -> Any:
        """One auth command: checked early, hashed off the loop, written, then tokens updated."""
        self.store.check_admin(auth)  # before any bcrypt work: a non-root caller burns no CPU
        if isinstance(command, pb.AuthUserAddRequest | pb.AuthUserChangePasswordRequest):
            no_password = isinstance(command, pb.AuthUserAddRequest) and command.options.no_password
            if not no_password:
                if isinstance(command, pb.AuthUserAddRequest) and not command.name:
                    raise errors.UserEmpty()
                raw = check_password_length(command.password)
                salt = bcrypt.gensalt(self.bcrypt_cost)
                async with self._bcrypt:
                    hashed = await asyncio.to_thread(bcrypt.hashpw, raw, salt)
                command.hashedPassword = hashed.decode()
            command.password = ""  # the log never holds a password
        resp = await self._write(command, auth)
        if isinstance(command, pb.AuthUserDeleteRequest | pb.AuthUserChangePasswordRequest):
            self.tokens.invalidate_user(command.name)
        elif isinstance(command, pb.AuthDisableRequest):
            self.tokens.disable()
        return resp

    # ------------------------------------------------------------------ reads
    def read(self, request: Any, auth: AuthInfo | None) -> Any:
        """UserGet, UserList, RoleGet, RoleList, AuthStatus, answered from this member's state."""
        s = self.store
        if isinstance(request, pb.AuthUserGetRequest):
            return s.user_get(auth, request.name)
        if isinstance(request, pb.AuthRoleGetRequest):
            return s.role_get(auth, request.role)
        if isinstance(request, pb.AuthUserListRequest):
            return s.user_list(auth)
        if isinstance(request, pb.AuthRoleListRequest):
            return s.role_list(auth)
        if isinstance(request, pb.AuthStatusRequest):
            return pb.AuthStatusResponse(enabled=s.enabled, authRevision=s.revision)
        raise TypeError(f"not an auth read: {type(request).__name__}")
