"""A synchronous engine for unit tests: the real store and applier, committed inline."""

from __future__ import annotations

from typing import Any

from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import Applier
from metastore_core.engine.entry import AuthInfo, Entry
from metastore_core.engine.lease import Lessor
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import Storage


class Engine:
    """Store + lessor + applier; `write` applies and makes the batch durable like the committer."""

    def __init__(self, storage: Storage, **store_options: Any) -> None:
        """store_options go to MVCCStore (crc, value_cache_bytes, checkpoint_dir) and to reopen()."""
        self.storage = storage
        self.now = 0.0
        self.store_options = store_options
        self.store = MVCCStore(storage, **store_options)
        self.store.load()
        self.lessor = Lessor(self.store)
        self.lessor.load(self.now)
        self.alarms = Alarms(self.store)
        self.alarms.load()
        self.applier = Applier(self.store, self.lessor, self.alarms, lambda: self.now)
        self.auth = self.applier.auth
        self.auth.load()

    def write(self, command: Any, auth: AuthInfo | None = None) -> Any:
        """Apply command as the next entry, choosing a lease ID first as the member does."""
        if isinstance(command, pb.LeaseGrantRequest) and command.ID == 0:
            command = pb.LeaseGrantRequest(ID=self.lessor.new_id(), TTL=command.TTL)
        resp = self.applier.apply(Entry(self.store.consistent_index + 1, 1, command, auth))
        self.commit()
        return resp

    def commit(self) -> None:
        d = self.store.drain()
        if d is not None:
            self.storage.write(d.batch, sync=False)
            self.store.mark_durable(d)

    def reopen(self) -> Engine:
        return Engine(self.storage, **self.store_options)


def index_state(store: MVCCStore) -> tuple[int, int, dict[bytes, tuple[list[int], int, int, int]]]:
    """Everything a load builds, loading first if the store is new."""
    if store.committed_rev == 1 and not len(store.index):
        store.load()
    index = {k: (h.entries, h.create, h.version, h.lease) for k, h in store.index.all()}
    return store.committed_rev, store.compact_rev, index
