"""Per-client limits: a token bucket for the rate, a cap on unary calls in flight, per client.

The global limits (limits.py) protect the daemon; these protect clients from each other: one
client with 400 puts in flight made 26 % of another client's reads fail at the global cap.
With --max-client-requests a client past its share is refused while the others go on;
--client-rate adds a token bucket (burst --client-burst) that every call, stream opens
included, takes one token from. Over either: RESOURCE_EXHAUSTED at once, naming the flag.

A client is the user `Call.auth` names (this layer runs inside auth, so it sees it), else
(ANONYMOUS: auth off, or a call that named no user) the peer's address without its port:
every connection from one host is one client. Idle clients are forgotten by `sweep`, so the table holds
only clients that are busy or have spent tokens lately.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from metastore_core import errors
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo, check_first

SWEEP_S = 10.0


def client_key(call: Call) -> str:
    """'user:NAME' when authenticated, else the peer without its port ('ipv4:10.0.0.7')."""
    auth = call.auth
    if auth is not None and auth.user:  # with auth off every call is ANONYMOUS: the host decides
        return "user:" + auth.user
    peer = call.peer()
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class Client:
    """One client's bucket and counts."""

    __slots__ = ("in_flight", "last", "refused_in_flight", "refused_rate", "requests", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.in_flight = 0
        self.requests = 0
        self.refused_rate = 0
        self.refused_in_flight = 0


class ClientLimits:
    """The per-client table, the checks, and the figures stats and /metrics show."""

    def __init__(
        self,
        max_in_flight: int,
        rate: float,
        burst: int = 0,
        clock: Callable[[], float] = time.monotonic,
        key: Callable[[Call], str] = client_key,
    ) -> None:
        self.max_in_flight = max_in_flight  # 0: no cap
        self.rate = rate  # tokens a second; 0: no rate limit
        self.burst = float(burst or max(rate, 1.0))
        self.clock = clock
        self.key = key
        self.clients: dict[str, Client] = {}
        self.refused_rate = 0
        self.refused_in_flight = 0

    @property
    def enabled(self) -> bool:
        return bool(self.max_in_flight or self.rate)

    def _client(self, key: str) -> Client:
        c = self.clients.get(key)
        if c is None:
            c = self.clients[key] = Client(self.burst, self.clock())
        return c

    def _take_token(self, c: Client) -> None:
        now = self.clock()
        tokens = min(self.burst, c.tokens + (now - c.last) * self.rate)
        c.last = now
        if tokens < 1.0:
            c.tokens = tokens
            c.refused_rate += 1
            self.refused_rate += 1
            raise errors.ClientRateLimited(self.rate)
        c.tokens = tokens - 1.0

    def enter(self, call: Call, unary: bool) -> Client:
        """Admit one call of call's client (raise if over a limit); unary ones count in flight."""
        c = self._client(self.key(call))
        if unary and self.max_in_flight and c.in_flight >= self.max_in_flight:
            c.refused_in_flight += 1
            self.refused_in_flight += 1
            raise errors.ClientTooManyRequests(self.max_in_flight)
        if self.rate:
            self._take_token(c)
        c.requests += 1
        if unary:
            c.in_flight += 1
        return c

    def sweep(self) -> int:
        """Forget idle clients whose bucket is full again; returns how many are left."""
        now = self.clock()
        for key, c in list(self.clients.items()):
            full = not self.rate or c.tokens + (now - c.last) * self.rate >= self.burst
            if not c.in_flight and full:
                del self.clients[key]
        return len(self.clients)

    async def run(self) -> None:
        """Forget idle clients now and then."""
        while True:
            await asyncio.sleep(SWEEP_S)
            self.sweep()

    def busiest(self, n: int = 5) -> list[tuple[str, Client]]:
        """The n clients with the most calls in flight, then the most refusals."""
        ranked = sorted(
            self.clients.items(),
            key=lambda kc: (kc[1].in_flight, kc[1].refused_in_flight + kc[1].refused_rate),
            reverse=True,
        )
        return ranked[:n]

    # ------------------------------------------------------------------ the layer
    def layer(self) -> Layer:
        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            if not info.policy.limits or not self.enabled:
                return fn
            enter = self.enter
            if not info.server_streaming and not info.client_streaming:

                async def unary(request: Any, call: Call) -> Any:
                    c = enter(call, True)
                    try:
                        return await fn(request, call)
                    finally:
                        c.in_flight -= 1

                return unary

            # a stream counts toward the rate when it opens, not toward the calls in flight
            return check_first(info, fn, lambda call: enter(call, False))

        return wrap
