"""The member's facade: the one door to the store, the lessor, the alarms and the write path.

Servicers (server/services/) call only these methods. Requests and replies are
etcd's own messages; refusals are domain errors (errors.py). Every write goes
write() -> WriteGuard.check -> Consensus.propose -> Applier.apply -> Committer,
and every read goes range() -> Consensus.read_index -> the store at its
committed revision, so a read never sees a write before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from metastore_core import errors
from metastore_core.config import Config
from metastore_core.engine import reads, wire
from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import Applier
from metastore_core.engine.auth import AuthStore
from metastore_core.engine.autocompact import make_policy
from metastore_core.engine.commands import mutates
from metastore_core.engine.entry import AuthInfo, Command, Entry
from metastore_core.engine.keyrange import READ
from metastore_core.engine.lease import Lessor
from metastore_core.engine.ranges import range_at
from metastore_core.engine.watch import WatchHub, WatchLimits, WatchSession
from metastore_core.engine.wire import Encoded
from metastore_core.member.auth import Auth
from metastore_core.member.committer import Committer, Listener
from metastore_core.member.compactor import AutoCompactor, Compactor
from metastore_core.member.consensus import Consensus, MemberInfo
from metastore_core.member.figures import MemberFigures, Proposals
from metastore_core.member.guard import Spawn, WriteGuard
from metastore_core.member.integrity import Integrity, settle_watermark
from metastore_core.member.leases import Leases
from metastore_core.member.maintenance import Maintenance, in_use
from metastore_core.member.single import SingleNode
from metastore_core.member.steps import drive
from metastore_core.member.tokens import make_provider
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import Storage
from metastore_core.storage import layout as L
from metastore_core.storage.base import StorageError
from metastore_core.storage.watermark import SYNC_INTERVAL_S, Mark, Watermark

log = logging.getLogger(__name__)

ETCD_API_VERSION = "3.5.0"  # the etcd API level we speak; clients switch features on it
_ALARM = pb.AlarmRequest
JOIN_OFF_LOOP_BYTES = 4 << 20  # a reply this big is joined on a thread
# A read walking this many keys waits until no other such read is being built: each holds about
# twice its reply while it is joined and copied, and four full 1M-key ranges at once took
# +2.8 GiB and a 2.1 s stall where one after the other took +0.6 GiB and at most 0.19 s.
BIG_READ_KEYS = 100_000
_NO_WAIT = contextlib.nullcontext()


@dataclass(frozen=True)
class Loop:
    """A background loop the member needs while it runs; the server supervises it."""

    name: str
    run: Callable[[], Coroutine[Any, Any, None]]


def _spawn(name: str, fn: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
    async def run() -> None:
        await fn()

    return asyncio.get_running_loop().create_task(run(), name=f"metastore:{name}")


class Node:
    """One member: reads, writes, leases, watches, alarms and maintenance, behind one facade."""

    def __init__(
        self,
        storage: Storage,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        spawn: Spawn = _spawn,
        watermark: Watermark | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._watermark = watermark
        budget = config.value_cache_bytes
        self._store = store = MVCCStore(
            storage,
            crc=config.enable_crc,
            value_cache_bytes=None if budget < 0 else budget,
            checkpoint_dir=config.data_dir if config.backend == "leveldb" else None,
        )
        self._cold = asyncio.Event()  # a load left newest values in storage: warm them
        self._big_reads = asyncio.Semaphore(1)
        store.incremental_compaction = True
        self._lessor = lessor = Lessor(store)
        self._alarms = alarms = Alarms(store)
        self._auth_store = auth_store = AuthStore(store, lessor.keys_of)
        self._applier = Applier(store, lessor, alarms, clock, auth_store)
        self._committer = committer = Committer(store, sync=config.fsync, watermark=watermark)
        self._consensus: Consensus = SingleNode(
            store, self._applier, committer, self._member_info, self.load, self._on_applied
        )
        self._hub = WatchHub(
            store,
            self.header,
            WatchLimits(
                buffer_events=config.watch_buffer_events,
                max_lag_revisions=config.watch_max_lag_revisions,
                fragment_bytes=config.max_request_bytes,
            ),
        )
        committer.listeners.append(self._hub.on_events)
        self._guard = guard = WriteGuard(
            store=store,
            alarms=alarms,
            committer=committer,
            propose=self._consensus.propose,
            reload=self.load,
            spawn=spawn,
            quota=config.quota_backend_bytes,
            watermark=watermark,
        )
        is_leader = self._consensus.is_leader
        self._compactor = Compactor(store, committer)
        policy = make_policy(config.auto_compaction_mode, config.auto_compaction_retention, clock())
        self._auto = AutoCompactor(store, policy, self.write, is_leader)
        self._leases = Leases(lessor, clock, self.write, is_leader, config.lease_checkpoint_interval_s)
        self._maintenance = Maintenance(
            store, snapshot_format=config.snapshot_format, member=self._member_info
        )
        tokens = make_provider(config.auth_token, config.auth_token_ttl_s, clock)
        self.auth = Auth(auth_store, tokens, self.write, config.bcrypt_cost)
        self._integrity = Integrity(store, guard.report_corruption, config.corrupt_check_interval_s)
        self.proposals = Proposals()
        self.figures = MemberFigures(
            store, lessor, alarms, self._hub, committer, guard, self._leases, self._compactor, self._auto,
            self._maintenance, self._integrity, self._applier.ops, self.proposals,
        )  # fmt: skip
        self.started = time.time()

    # ---------------------------------------------------------------- lifecycle
    def load(self) -> int:
        """Rebuild every in-memory structure from storage (start-up, rollback, recovery); returns
        the number of keys in the index (the server freezes a big one out of garbage collections,
        server/gcpauses.py)."""
        t0 = time.monotonic()

        def progress(records: int, revision: int) -> None:
            log.info(
                "loading the store: %d records read (revision %d) in %.1fs",
                records,
                revision,
                time.monotonic() - t0,
                extra={"records": records, "revision": revision},
            )

        records = self._store.load(progress)
        self._lessor.load(self._clock())
        self._alarms.load()
        self._auth_store.load()
        watermark = self._watermark
        if watermark is not None:
            settle_watermark(self._store, watermark, accept_lost=self._config.unsafe_accept_lost_writes)
            for alarm in sorted(watermark.mark.alarms):  # raised while the store took no writes
                self._alarms.activate(self._store.ids.member_id, alarm)  # staged for the next batch
        store = self._store
        log.info(
            "store loaded from %s: %d records read, %d keys, revision %d, %d leases in %.2fs",
            store.loaded_from,
            records,
            len(store.index),
            store.committed_rev,
            len(self._lessor.leases),
            time.monotonic() - t0,
            extra={"records": records, "revision": store.committed_rev, "keys": len(store.index)},
        )
        if store.cold_below:
            self._cold.set()
        return len(store.index)

    async def settle_kept_alarms(self) -> None:
        """Start-up, after load: alarms the watermark kept go into the store (guard.py)."""
        await self._guard.settle_kept_alarms()

    async def check_integrity_on_start(self) -> None:
        """--corrupt-check-on-start: scrub every record; raises StorageError on corruption."""
        await self._integrity.check_on_start()

    def loops(self) -> list[Loop]:
        """The loops to run while serving; leader-only ones ask the consensus seam each tick."""
        loops = [
            Loop("lease-expiry", self._leases.run_expiry),
            Loop("lease-checkpoints", self._leases.run_checkpoints),
            Loop("watch-progress", self._watch_progress),
        ]
        if self._auto.policy is not None:
            loops.append(Loop("auto-compaction", self._auto.run))
        if self._config.corrupt_check_interval_s > 0:
            loops.append(Loop("corrupt-check", self._integrity.run))
        loops.append(Loop("storage-recovery", self._guard.run_recovery))
        if self._watermark is not None and self._config.fsync:
            loops.append(Loop("watermark-sync", self._sync_watermark))
        loops.append(Loop("value-warmup", self._warm_values))
        return loops

    async def _warm_values(self) -> None:
        """After a load from the index checkpoint, hold the newest values from storage a step at
        a time between requests (reads of values not held yet go to storage meanwhile)."""
        while True:
            await self._cold.wait()
            self._cold.clear()
            started, held = time.monotonic(), 0
            steps = self._store.warm()
            try:
                for so_far in steps:
                    held = so_far
                    await asyncio.sleep(0)
            except L.CorruptRecord as exc:
                self.report_corruption(exc)
                continue
            finally:
                steps.close()
            log.info("value cache warmed: %d values held in %.1fs", held, time.monotonic() - started)

    async def _sync_watermark(self) -> None:
        """Bring the last written watermark to disk within SYNC_INTERVAL_S (storage/watermark.py)."""
        watermark = self._watermark
        assert watermark is not None
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            if not self._guard.failure:
                await self._committer.run_io(lambda: watermark.sync(time.monotonic()))

    async def persist(self) -> None:
        """Shutdown's persist phase: exact lease TTLs, then everything staged made durable."""
        try:
            log.info("checkpointed %d leases", await self._leases.checkpoint_all())
        except errors.MetastoreError as exc:
            log.warning("lease checkpoint at shutdown failed: %s", exc)
        await self._committer.flush()
        if not self._config.fsync:  # batches were written without fsync: sync once now
            store, watermark = self._store, self._watermark
            index, rev = store.consistent_index, store.committed_rev

            def sync() -> None:
                store.storage.write([(L.META_CONSISTENT_INDEX, L.u64(index))], sync=True)
                if watermark is not None:
                    watermark.write(Mark(index, rev, watermark.mark.alarms))

            await self._committer.run_io(sync)
        await self._save_checkpoint()

    async def _save_checkpoint(self) -> None:
        """The index checkpoint, so the next start reads it instead of scanning the store."""
        store = self._store
        if store.checkpoint_dir is None or self._guard.failure is not None:
            return
        started = time.monotonic()
        made = store.checkpoint()  # on the loop: nothing changes the index while it is read
        if made is None:
            log.info("no index checkpoint: a write or a compaction is still under way")
            return
        try:
            await self._committer.run_io(lambda: store.save_checkpoint(*made))
        except (OSError, StorageError) as exc:
            log.warning("could not write the index checkpoint: %s", exc)
            return
        log.info(
            "index checkpoint written: %d keys at revision %d, %d bytes in %.2fs",
            len(store.index),
            store.committed_rev,
            len(made[1]),
            time.monotonic() - started,
        )

    def close(self) -> None:
        self._compactor.close()
        self._committer.close()
        self._store.storage.close()
        if self._watermark is not None:
            self._watermark.close()

    # ---------------------------------------------------------------- identity
    def _member_info(self) -> MemberInfo:
        cfg = self._config
        # no peer URLs: a single member listens for no peers (it invented http://localhost:2380)
        return MemberInfo(self._store.ids.member_id, cfg.name, [], cfg.client_urls)

    def header(self, into: pb.ResponseHeader, revision: int | None = None) -> None:
        """Fill a response header: ids, term, and the revision (current unless given or set)."""
        ids = self._store.ids
        into.cluster_id = ids.cluster_id
        into.member_id = ids.member_id
        into.raft_term = ids.raft_term
        if revision is not None:
            into.revision = revision
        elif not into.revision:
            into.revision = self._store.committed_rev

    def is_leader(self) -> bool:
        return self._consensus.is_leader()

    def has_leader(self) -> bool:
        return self._consensus.leader_id != 0

    def members(self) -> list[pb.Member]:
        return [
            pb.Member(ID=m.id, name=m.name, peerURLs=m.peer_urls, clientURLs=m.client_urls)
            for m in self._consensus.members()
        ]

    # ---------------------------------------------------------------- reads and writes
    async def range(self, r: pb.RangeRequest, auth: AuthInfo | None = None) -> pb.RangeResponse:
        """A Range at r.revision (0: current), after the read barrier unless serializable."""
        if not r.serializable:
            await self._consensus.read_index()
        self._auth_store.check_access(auth, READ, r.key, r.range_end)  # no await from here on
        store = self._store
        resp = range_at(store, r, store.check_rev(r.revision))
        self._applier.ops.ranges += 1
        self.header(resp.header, store.committed_rev)
        return resp

    def read(
        self, r: pb.RangeRequest, auth: AuthInfo | None = None
    ) -> Coroutine[Any, Any, pb.RangeResponse | Encoded]:
        """A client's Range: one key at once; a range in steps that let other requests run
        between them, the reply built in pieces (engine/reads.py), at most --max-response-bytes."""
        # not async itself: a Get costs no extra coroutine frame
        return self.range(r, auth) if not r.range_end else self._read_range(r, auth)

    async def _read_range(self, r: pb.RangeRequest, auth: AuthInfo | None) -> Encoded:
        if not r.serializable:
            await self._consensus.read_index()
        self._auth_store.check_access(auth, READ, r.key, r.range_end)
        store = self._store
        self._applier.ops.ranges += 1
        keys = 0 if r.count_only else store.index.span(r.key, r.range_end)
        async with self._one_big_read(keys):
            # the revision is checked and pinned after the wait: compaction may move meanwhile
            rev = store.check_rev(r.revision)
            current = store.committed_rev
            with store.pinned(rev):
                body = await drive(reads.range_steps(store, r, rev, self._config.max_response_bytes))
            return await self._reply(wire.RANGE_HEADER, body, current)

    def _one_big_read(self, keys: int) -> contextlib.AbstractAsyncContextManager[Any]:
        """The turn a read of `keys` keys waits for: none for a small one (BIG_READ_KEYS)."""
        return self._big_reads if keys >= BIG_READ_KEYS else _NO_WAIT

    async def txn(self, r: pb.TxnRequest, auth: AuthInfo | None = None) -> pb.TxnResponse | Encoded:
        """A client's Txn: one that can write goes through write(); one that only compares and
        reads is served at the committed revision, in steps, as etcd serves it without raft."""
        if mutates(r):
            resp: pb.TxnResponse = await self.write(r, auth)
            return resp
        await self._consensus.read_index()
        self._auth_store.check_entry(auth, r)  # as apply checks a txn that writes
        store = self._store
        ranges = [0]
        async with self._one_big_read(self._applier.work(r)):
            rev = store.committed_rev  # after the wait, as in _read_range
            with store.pinned(rev):
                body = await drive(reads.txn_steps(store, r, rev, self._config.max_response_bytes, ranges))
            ops = self._applier.ops
            ops.ranges += ranges[0]
            if ranges[0] > 1:
                ops.txns += 1
            return await self._reply(wire.TXN_HEADER, body, rev)

    async def _reply(self, header_field: int, body: wire.Body, revision: int) -> Encoded:
        """body with its response header in front, as one serialized reply."""
        header = pb.ResponseHeader()
        self.header(header, revision)
        out = wire.Body()
        out.add_field(header_field, header.SerializeToString())
        out.parts.extend(body.parts)
        if out.size + body.size < JOIN_OFF_LOOP_BYTES:
            return Encoded(b"".join(out.parts))
        # bytes.join lets go of the GIL for a big result: joining a 270 MiB reply (~0.15 s) on
        # a thread keeps the loop serving others meanwhile
        return Encoded(await asyncio.to_thread(b"".join, out.parts))

    async def write(self, command: Command, auth: AuthInfo | None = None) -> Any:
        """Check, propose and apply one write command; answers once it is durable."""
        if type(command) is pb.LeaseGrantRequest:
            command = self._leases.prepare_grant(command)  # the ID is chosen here, never in apply
        guard = self._guard
        await guard.check(command)
        proposals = self.proposals
        proposals.pending += 1
        try:
            resp = await self._consensus.propose(command, auth)
        except errors.StorageFailed:
            proposals.failed += 1
            await guard.settled()  # the alarm the failure raises is applied before the caller hears
            raise
        finally:
            proposals.pending -= 1
        kind = type(command)
        if kind is pb.CompactionRequest and command.physical:
            await self._compactor.wait()
        elif (kind is pb.TxnRequest or (kind is pb.DeleteRangeRequest and command.prev_kv)) and (
            resp.ByteSize() > self._config.max_response_bytes
        ):
            # applied and durable, but too big to send: as etcd, whose gRPC refuses the reply
            raise errors.ResponseTooLarge(self._config.max_response_bytes)
        self.header(resp.header)
        return resp

    def _on_applied(self, entry: Entry) -> None:
        if type(entry.command) is pb.CompactionRequest:
            self._compactor.kick()  # every member compacts its own storage, in the background

    def observe_commits(self, observer: Callable[[float, float, int], None]) -> None:
        """Call observer(start, end, entries) after each batch write, on the thread that wrote it
        (monotonic times): tracing's commit spans."""
        self._committer.observers.append(observer)

    def subscribe(self, listener: Listener) -> None:
        """Call listener(revision, events) after each batch of writes becomes durable."""
        self._committer.listeners.append(listener)

    # ---------------------------------------------------------------- leases
    async def lease_grant(
        self, r: pb.LeaseGrantRequest, auth: AuthInfo | None = None
    ) -> pb.LeaseGrantResponse:
        resp: pb.LeaseGrantResponse = await self.write(r, auth)
        self._leases.granted_total += 1
        return resp

    async def lease_revoke(
        self, r: pb.LeaseRevokeRequest, auth: AuthInfo | None = None
    ) -> pb.LeaseRevokeResponse:
        resp: pb.LeaseRevokeResponse = await self.write(r, auth)
        self._leases.revoked_total += 1
        return resp

    async def lease_keep_alive(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        resp = pb.LeaseKeepAliveResponse(ID=lease_id, TTL=await self._leases.keep_alive(lease_id))
        self.header(resp.header)
        return resp

    def lease_time_to_live(
        self, r: pb.LeaseTimeToLiveRequest, auth: AuthInfo | None = None
    ) -> pb.LeaseTimeToLiveResponse:
        """With keys: only the keys the caller may read (CVE-2023-32082 listed them all)."""
        resp = self._leases.time_to_live(r)
        s = self._auth_store
        if resp.keys and s.enabled and auth is not None:
            s.check_user(auth)
            readable = [k for k in resp.keys if s.allowed(auth.user, READ, k)]
            del resp.keys[:]
            resp.keys.extend(readable)
        self.header(resp.header)
        return resp

    def lease_leases(self) -> pb.LeaseLeasesResponse:
        resp = self._leases.leases()
        self.header(resp.header)
        return resp

    def lease_exists(self, lease_id: int) -> bool:
        return lease_id > 0 and self._lessor.get(lease_id) is not None

    # ---------------------------------------------------------------- watch
    def watch_open(self) -> WatchSession:
        """A new Watch session (one stream); close it with watch_close."""
        return self._hub.open()

    def watch_close(self, session: WatchSession) -> None:
        self._hub.close(session)

    def check_watch(self, auth: AuthInfo | None, key: bytes, end: bytes) -> None:
        """May auth watch (key, end)? The whole range must be readable (open-ended too)."""
        self._auth_store.check_access(auth, READ, key or b"\0", end)

    async def _watch_progress(self) -> None:
        """Periodic progress notifications (etcd: every 10 minutes by default)."""
        while True:
            await asyncio.sleep(max(self._config.watch_progress_notify_interval_s, 0.05))
            self._hub.progress_tick()

    # ---------------------------------------------------------------- alarms and failures
    async def alarm(self, r: pb.AlarmRequest, auth: AuthInfo | None = None) -> pb.AlarmResponse:
        """GET lists alarms; ACTIVATE and DEACTIVATE are commands through apply (no header, as etcd)
        and, with auth on, root's alone."""
        if not 0 <= r.alarm <= pb.CORRUPT:
            raise errors.InvalidRequest(f"etcdserver: invalid alarm type {r.alarm}")
        if r.action == _ALARM.GET:
            return pb.AlarmResponse(alarms=self._alarms.get(r.alarm))
        if r.action not in (_ALARM.ACTIVATE, _ALARM.DEACTIVATE):
            raise errors.InvalidRequest(f"etcdserver: invalid alarm action {r.action}")
        if r.action == _ALARM.ACTIVATE and r.alarm == pb.NONE:
            raise errors.InvalidRequest("etcdserver: cannot activate alarm NONE")
        guard = self._guard
        failed = guard.failure is not None
        # etcd answers with the alarm it raised, or the one it cleared (none if it was not active)
        changed = r.action == _ALARM.ACTIVATE or (r.memberID, r.alarm) in self._alarms.active
        try:
            await self._consensus.propose(r, auth)
        except errors.StorageFailed:
            if not failed:
                raise
            # applied in memory; the failed store keeps it from disk until recovery
        gone = not self._alarms.has(pb.NOSPACE) and not self._alarms.has(pb.CORRUPT)
        if r.action == _ALARM.DEACTIVATE and failed and gone:
            await guard.recover()  # the last alarm is gone: the operator says there is space again
        member = pb.AlarmMember(memberID=r.memberID, alarm=r.alarm)
        return pb.AlarmResponse(alarms=[member] if changed else [])

    def report_corruption(self, exc: Exception) -> None:
        """A read found a record failing its check: raise CORRUPT and refuse writes."""
        self._guard.report_corruption(exc)

    def on_storage_failure(self, hook: Callable[[Exception], None]) -> None:
        """Call hook(error) when a batch write fails (health re-evaluates at once)."""
        self._guard.on_failure.append(hook)

    def set_memory_full(self, full: bool, limit: int) -> None:
        self._guard.set_memory_full(full, limit)

    def storage_failure(self) -> str | None:
        """Why writes are failing, or None."""
        failed = self._guard.failure
        return None if failed is None else str(failed)

    async def probe_storage(self, timeout_s: float = 5.0) -> str | None:
        """A real write and read of a probe key, ordered with batch writes; None when healthy."""
        failed = self._guard.failure
        if failed is not None:
            return f"write failed: {failed}"
        storage = self._store.storage

        def probe() -> None:
            token = os.urandom(8)
            storage.write([(L.META_HEALTH_PROBE, token)], sync=False)
            if storage.get(L.META_HEALTH_PROBE) != token:
                raise OSError("health probe read back different bytes than it wrote")

        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: on 3.11 it can swallow a cancel
                await self._committer.run_io(probe)
        except TimeoutError:
            return f"probe took longer than {timeout_s}s"
        except Exception as exc:
            return f"probe failed: {exc}"
        return None

    def check_admin(self, auth: AuthInfo | None) -> None:
        """With auth on, only root (maintenance calls that read or reshape the whole store)."""
        self._auth_store.check_admin(auth)

    # ---------------------------------------------------------------- maintenance
    def status(self) -> pb.StatusResponse:
        store, consensus = self._store, self._consensus
        index = store.consistent_index
        resp = pb.StatusResponse(
            version=ETCD_API_VERSION,
            dbSize=store.storage.size(),
            dbSizeInUse=in_use(store),
            leader=consensus.leader_id,
            raftIndex=index,
            raftTerm=consensus.term,
            raftAppliedIndex=index,
            errors=[*self._alarms.describe(), *self._guard.describe()],
        )
        self.header(resp.header)
        return resp

    async def defragment(self) -> pb.DefragmentResponse:
        await self._maintenance.defragment()
        return pb.DefragmentResponse()  # etcd sends no header here

    async def hash(self) -> pb.HashResponse:
        h, rev = await self._maintenance.hash()
        resp = pb.HashResponse(hash=h)
        self.header(resp.header, rev)
        return resp

    async def hash_kv(self, r: pb.HashKVRequest) -> pb.HashKVResponse:
        h, compact = await self._maintenance.hash_kv(r.revision)
        resp = pb.HashKVResponse(hash=h, compact_revision=compact)
        self.header(resp.header)
        return resp

    def snapshot(self) -> AsyncGenerator[pb.SnapshotResponse, None]:
        """etcd's Snapshot stream of the whole store (no header, as etcd)."""
        return self._maintenance.snapshot()

    async def move_leader(self, r: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        await self._consensus.transfer_leadership(r.targetID)
        resp = pb.MoveLeaderResponse()
        self.header(resp.header)
        return resp
