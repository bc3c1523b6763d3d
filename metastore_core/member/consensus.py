"""The consensus seam: every write reaches the one apply path through `Consensus.propose`.

The rules an implementation keeps (single.py today, a replicated log later):
1. A command is fully decided before it is proposed. Whatever is random or read
   from a clock is chosen by the proposer and carried in the command: a lease
   grant carries its ID, an expiry is a LeaseRevoke the leader proposes, an
   alarm is an AlarmRequest. Applying the same entries in the same order on
   any member leaves byte-identical storage (tests/unit/test_determinism.py).
2. An entry's index becomes the store's consistent_index when it is applied,
   whether its command succeeds or a check refuses it; a refusal changes
   nothing else (the applier checks everything before the first change).
3. An exception inside apply that is not a domain refusal means this member
   cannot apply the log. It must never skip the entry and go on: that is
   silent divergence. The single node has not made the entry durable yet, so
   it drops everything staged, reloads from disk and fails the request (no
   member holds the entry; tests/unit/test_rollback.py). A replicated member,
   whose entry is already committed, must stop applying and report itself
   unhealthy until an operator acts.
4. Loops that only a leader may run (lease expiry and checkpoints,
   auto-compaction) ask `is_leader()` on every tick and idle otherwise.
5. `read_index()` returns once a read may see every write acknowledged before
   the call (linearizable reads); serializable reads skip it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from metastore_core.engine.entry import AuthInfo, Command, Entry

__all__ = ["AuthInfo", "Consensus", "Entry", "MemberInfo"]


@dataclass(frozen=True)
class MemberInfo:
    """A member as the Cluster service reports it."""

    id: int
    name: str
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)


class Consensus(Protocol):
    """Orders commands into log entries and applies them on this member."""

    async def propose(self, command: Command, auth: AuthInfo | None = None) -> Any:
        """Append command to the log; return its apply result once it is durable here."""
        ...

    async def read_index(self) -> None:
        """Return once a read may observe every write acknowledged before this call."""
        ...

    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> int: ...

    @property
    def term(self) -> int: ...

    def members(self) -> list[MemberInfo]: ...

    async def transfer_leadership(self, target: int) -> None:
        """Hand leadership to member target (etcd's MoveLeader)."""
        ...
