"""The single-member log: propose = apply now, then group commit.

With one member there is nothing to agree on: an entry's index is the next
consistent index, it is applied at once (in memory, staged for storage) and
`propose` returns when the committer has made it durable. Entries proposed
while an fsync is in flight share the next one (member/committer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine.apply import Applier
from metastore_core.engine.entry import AuthInfo, Command, Entry
from metastore_core.member.committer import Committer
from metastore_core.member.consensus import MemberInfo
from metastore_core.mvcc.store import MVCCStore


class SingleNode:
    """Consensus for a cluster of one: this member always leads."""

    def __init__(
        self,
        store: MVCCStore,
        applier: Applier,
        committer: Committer,
        member: Callable[[], MemberInfo],
        reload: Callable[[], None],
        on_applied: Callable[[Entry], None],
    ) -> None:
        self._store = store
        self._applier = applier
        self._committer = committer
        self._member = member
        self._reload = reload
        self._on_applied = on_applied

    async def propose(self, command: Command, auth: AuthInfo | None = None) -> Any:
        store = self._store
        entry = Entry(store.consistent_index + 1, self.term, command, auth)
        staged = store.staged_seq
        try:
            resp = self._applier.apply(entry)
        except errors.MetastoreError:
            raise  # a refusal: checks run before changes, so nothing was staged
        except Exception:
            # consensus.py rule 3: never let a half-applied entry reach disk
            if store.staged_seq != staged:
                await self._committer.rollback(self._reload)
            raise
        await self._committer.flush()
        self._on_applied(entry)
        return resp

    async def read_index(self) -> None:
        """Reads see only durable writes already (they read at the committed revision)."""

    def is_leader(self) -> bool:
        return True

    @property
    def leader_id(self) -> int:
        return self._member().id

    @property
    def term(self) -> int:
        return self._store.ids.raft_term

    def members(self) -> list[MemberInfo]:
        return [self._member()]

    async def transfer_leadership(self, target: int) -> None:
        """To itself it is done at once, as etcd answers (the leader is already the transferee)."""
        if target != self._member().id:
            raise errors.BadLeaderTransferee()
