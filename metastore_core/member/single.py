"""The single-member log: propose = apply now, then group commit.

With one member there is nothing to agree on: an entry's index is the next
consistent index, it is applied at once (in memory, staged for storage) and
`propose` returns when the committer has made it durable. Entries proposed
while an fsync is in flight share the next one (member/committer.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from metastore_core import errors
from metastore_core.engine.apply import Applier
from metastore_core.engine.entry import AuthInfo, Command, Entry
from metastore_core.member.committer import Committer
from metastore_core.member.consensus import MemberInfo
from metastore_core.member.steps import drive
from metastore_core.mvcc.store import MVCCStore

LONG_WORK = 2048  # keys a command may walk in one go (~10-20 ms); more is applied in steps


class SingleNode:
    """Consensus for a cluster of one: this member always leads."""

    def __init__(
        self,
        store: MVCCStore,
        applier: Applier,
        committer: Committer,
        member: Callable[[], MemberInfo],
        reload: Callable[[], object],
        on_applied: Callable[[Entry], None],
    ) -> None:
        self._store = store
        self._applier = applier
        self._committer = committer
        self._member = member
        self._reload = reload
        self._on_applied = on_applied

    async def propose(self, command: Command, auth: AuthInfo | None = None) -> Any:
        committer = self._committer
        if committer.exclusive_held:
            await committer.wait_turn()  # a long command is being applied: after it
        if self._applier.work(command) > LONG_WORK:
            # Applied in steps in a task of its own: a caller that times out or goes away
            # leaves it to finish (as with etcd's timeouts, it may still be applied).
            return await asyncio.shield(asyncio.ensure_future(self._propose_in_steps(command, auth)))
        resp, entry = await self._apply(command, auth, in_steps=False)
        await committer.flush()
        self._on_applied(entry)
        return resp

    async def _propose_in_steps(self, command: Command, auth: AuthInfo | None) -> Any:
        """A long command (a delete of many keys, a txn that reads or deletes many): applied in
        steps that give the event loop a turn, while every other change to the store waits
        and nothing of it is written or shown to readers until all of it is applied."""
        async with self._committer.exclusive():
            resp, entry = await self._apply(command, auth, in_steps=True)
        await self._committer.flush()
        self._on_applied(entry)
        return resp

    async def _apply(self, command: Command, auth: AuthInfo | None, *, in_steps: bool) -> tuple[Any, Entry]:
        store = self._store
        entry = Entry(store.consistent_index + 1, self.term, command, auth)
        staged = store.staged_seq
        try:
            if in_steps:
                resp = await drive(self._applier.apply_steps(entry))
            else:
                resp = self._applier.apply(entry)
        except errors.MetastoreError:
            raise  # a refusal: checks run before changes, so nothing was staged
        except BaseException:
            # consensus.py rule 3: never let a half-applied entry reach disk
            if store.staged_seq != staged:
                await self._committer.rollback(self._reload)
            raise
        return resp, entry

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
