"""Auth tokens: member-local, never replicated, never stored, never logged.

`simple` (etcd's default): 16 random letters and a sequence number, valid while used at least
once per TTL (each use restarts the TTL), dropped when the user is deleted or changes password and
all at once when auth is disabled. A simple token only names its user: the auth revision a request
carries is the store's revision when the request arrives, as etcd does.

`jwt`: signed claims {username, revision, exp} (etcd's), checked by signature and expiry; the
revision is the one at Authenticate, so any auth change makes older tokens stale (clients
re-authenticate on "revision of auth store is old"). Options as etcd spells them:
`jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from metastore_core.engine.entry import AuthInfo
from metastore_core.tokenspec import DEFAULT_JWT_TTL_S, parse_duration, parse_options

LETTERS = string.ascii_letters


class TokenProvider(Protocol):
    """Issues tokens and tells who a token names."""

    def assign(self, user: str, revision: int) -> str: ...

    def info(self, token: str, revision: int) -> AuthInfo | None:
        """Who token names, with the auth revision a request carrying it has; None if invalid."""
        ...

    def invalidate_user(self, user: str) -> None: ...

    def disable(self) -> None: ...


@dataclass
class _Simple:
    user: str
    expiry: float


class SimpleTokens:
    """etcd's simple tokens: random, with a TTL renewed on every use."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._tokens: dict[str, _Simple] = {}
        self._seq = 0

    def assign(self, user: str, revision: int) -> str:
        self._sweep()
        self._seq += 1
        token = "".join(secrets.choice(LETTERS) for _ in range(16)) + f".{self._seq}"
        self._tokens[token] = _Simple(user, self.clock() + self.ttl_s)
        return token

    def info(self, token: str, revision: int) -> AuthInfo | None:
        t = self._tokens.get(token)
        if t is None:
            return None
        now = self.clock()
        if t.expiry <= now:
            del self._tokens[token]
            return None
        t.expiry = now + self.ttl_s
        return AuthInfo(t.user, revision)

    def invalidate_user(self, user: str) -> None:
        self._tokens = {k: t for k, t in self._tokens.items() if t.user != user}

    def disable(self) -> None:
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)

    def _sweep(self) -> None:
        if len(self._tokens) % 1024 == 1023:  # now and then, not on every assign
            now = self.clock()
            self._tokens = {k: t for k, t in self._tokens.items() if t.expiry > now}


class JwtTokens:
    """Signed tokens (PyJWT); verify-only when given no private key."""

    def __init__(
        self,
        method: str,
        public_key: bytes,
        private_key: bytes | None,
        ttl_s: float,
        wall: Callable[[], float],
    ) -> None:
        import jwt  # imported only when configured: the simple provider needs none of it

        self._jwt: Any = jwt
        self.method = method
        self.public_key = public_key
        self.private_key = private_key
        self.ttl_s = ttl_s
        self.wall = wall
        if private_key is not None:  # refuse a key pair that does not match now, not at first login
            probe = jwt.encode({"probe": 1}, private_key, algorithm=method)
            try:
                jwt.decode(probe, public_key, algorithms=[method])
            except jwt.InvalidTokenError:
                raise ValueError("auth: public and private keys don't match") from None

    def assign(self, user: str, revision: int) -> str:
        if self.private_key is None:
            raise ValueError("auth: token signing attempted with verify-only key")
        claims = {"username": user, "revision": revision, "exp": int(self.wall() + self.ttl_s)}
        return str(self._jwt.encode(claims, self.private_key, algorithm=self.method))

    def info(self, token: str, revision: int) -> AuthInfo | None:
        try:
            claims = self._jwt.decode(
                token, self.public_key, algorithms=[self.method], options={"require": ["exp"]}
            )
        except self._jwt.InvalidTokenError:
            return None
        user, rev = claims.get("username"), claims.get("revision")
        if not isinstance(user, str) or not isinstance(rev, int):
            return None
        return AuthInfo(user, rev)

    def invalidate_user(self, user: str) -> None:
        """A signed token cannot be recalled; the auth change makes it stale instead."""

    def disable(self) -> None:
        """Nothing to drop: tokens live with the clients."""


def make_provider(spec: str, simple_ttl_s: float, clock: Callable[[], float]) -> TokenProvider:
    """The provider --auth-token names (keys are read here, once, at start-up)."""
    kind, opts = parse_options(spec)
    if kind == "simple":
        return SimpleTokens(simple_ttl_s, clock)
    priv = opts.get("priv-key")
    return JwtTokens(
        opts.get("sign-method", "RS256"),
        Path(opts["pub-key"]).read_bytes(),
        Path(priv).read_bytes() if priv else None,
        parse_duration(opts["ttl"]) if "ttl" in opts else DEFAULT_JWT_TTL_S,
        time.time,
    )
