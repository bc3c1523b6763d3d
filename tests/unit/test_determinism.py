"""Apply is deterministic (member/consensus.py rules 1 and 2): the same log makes the same bytes.

Two members start from the same snapshot and apply the same entries with
different clocks; everything they store must be identical, byte for byte.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metastore_core import errors
from metastore_core.engine import reads
from metastore_core.engine.alarms import Alarms
from metastore_core.engine.apply import Applier
from metastore_core.engine.entry import AuthInfo, Entry
from metastore_core.engine.lease import Lessor
from metastore_core.engine.reads import run
from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.authpb import auth_pb2 as apb
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L
from metastore_core.storage.memory import MemoryStorage


class Member:
    """A store, lessor, alarms and applier over its own storage, with its own clock."""

    def __init__(self, storage: MemoryStorage, now: float) -> None:
        self.storage = storage
        self.now = now
        self.store = MVCCStore(storage)
        self.store.load()
        self.lessor = Lessor(self.store)
        self.lessor.load(now)
        self.alarms = Alarms(self.store)
        self.alarms.load()
        self.applier = Applier(self.store, self.lessor, self.alarms, lambda: self.now)
        self.applier.auth.load()

    def apply(self, entry: Entry, in_steps: bool = False) -> str:
        """Apply and commit one entry; 'ok' or the refusal's class name (and the response)."""
        self.now += 0.731  # the clocks also drift apart while applying
        try:
            resp = run(self.applier.apply_steps(entry)) if in_steps else self.applier.apply(entry)
            outcome = f"ok {resp}"
        except errors.MetastoreError as exc:
            outcome = type(exc).__name__
        d = self.store.drain()
        if d is not None:
            self.storage.write(d.batch, sync=False)
            self.store.mark_durable(d)
        return outcome

    def contents(self) -> list[tuple[bytes, bytes]]:
        return list(self.storage.scan(b"", b"\xff"))


def _key(rnd: random.Random) -> bytes:
    return b"key/%02d" % rnd.randrange(12)


def _op(rnd: random.Random, leases: list[int], depth: int = 0) -> pb.RequestOp:
    kind = rnd.randrange(4 if depth < 2 else 3)
    if kind == 0:
        lease = rnd.choice([0, 0, *leases]) if leases else 0
        return pb.RequestOp(
            request_put=pb.PutRequest(key=_key(rnd), value=b"%d" % rnd.randrange(99), lease=lease)
        )
    if kind == 1:
        return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=_key(rnd), prev_kv=True))
    if kind == 2:
        return pb.RequestOp(request_range=pb.RangeRequest(key=b"key/", range_end=b"key0"))
    return pb.RequestOp(request_txn=_txn(rnd, leases, depth + 1))


def _txn(rnd: random.Random, leases: list[int], depth: int = 0) -> pb.TxnRequest:
    key = _key(rnd)
    return pb.TxnRequest(
        compare=[pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=1)],
        success=[_op(rnd, leases, depth)],
        failure=[_op(rnd, leases, depth)],
    )


USERS = ("root", "alice", "bob")
HASH = "$2b$04$" + "x" * 53  # hashed before proposing; apply only stores it


def _auth_command(rnd: random.Random) -> Any:
    """Auth changes, in any order: many are refused (no such user, root missing), alike on both."""
    name, role = rnd.choice(USERS), rnd.choice(("root", "r1", "r2"))
    perm = apb.Permission(permType=rnd.randrange(3), key=_key(rnd), range_end=rnd.choice([b"", b"key0"]))
    return rnd.choice(
        [
            pb.AuthUserAddRequest(name=name, hashedPassword=HASH),
            pb.AuthUserDeleteRequest(name=name),
            pb.AuthUserChangePasswordRequest(name=name, hashedPassword=HASH[:-1] + "y"),
            pb.AuthUserGrantRoleRequest(user=name, role=role),
            pb.AuthUserRevokeRoleRequest(name=name, role=role),
            pb.AuthRoleAddRequest(name=role),
            pb.AuthRoleDeleteRequest(role=role),
            pb.AuthRoleGrantPermissionRequest(name=role, perm=perm),
            pb.AuthRoleRevokePermissionRequest(role=role, key=perm.key, range_end=perm.range_end),
            pb.AuthEnableRequest(),
            pb.AuthDisableRequest(),
        ]
    )


def commands(seed: int, n: int = 120) -> list[Any]:
    """A random log: everything random (lease IDs) was chosen by the proposer, as the rules say."""
    rnd = random.Random(seed)
    leases: list[int] = []
    out: list[Any] = []
    if rnd.random() < 0.7:  # often a root that can enable auth, so permissions come into play
        out += [
            pb.AuthUserAddRequest(name="root", hashedPassword=HASH),
            pb.AuthUserGrantRoleRequest(user="root", role="root"),
        ]
    rev = 1
    for _ in range(n):
        roll = rnd.random()
        if roll < 0.35:
            lease = rnd.choice([0, *leases]) if leases else 0
            out.append(
                pb.PutRequest(key=_key(rnd), value=bytes(rnd.randrange(256) for _ in range(8)), lease=lease)
            )
        elif roll < 0.45:
            out.append(pb.DeleteRangeRequest(key=b"key/0", range_end=b"key/1"))
        elif roll < 0.6:
            out.append(_txn(rnd, leases))
        elif roll < 0.7:
            lease_id = rnd.randrange(1, 2**63)
            leases.append(lease_id)
            out.append(pb.LeaseGrantRequest(ID=lease_id, TTL=rnd.randrange(1, 100)))
        elif roll < 0.76 and leases:
            out.append(pb.LeaseRevokeRequest(ID=leases.pop(rnd.randrange(len(leases)))))
        elif roll < 0.82 and leases:
            cp = pb.LeaseCheckpoint(ID=rnd.choice(leases), remaining_TTL=rnd.randrange(0, 60))
            out.append(pb.LeaseCheckpointRequest(checkpoints=[cp]))
        elif roll < 0.88:
            rev += rnd.randrange(1, 6)
            out.append(pb.CompactionRequest(revision=rev))  # may be refused (future): same on both
        elif roll < 0.91:
            action = rnd.choice([pb.AlarmRequest.ACTIVATE, pb.AlarmRequest.DEACTIVATE])
            out.append(pb.AlarmRequest(action=action, memberID=rnd.randrange(3), alarm=rnd.choice([1, 2])))
        elif roll < 0.97:
            out.append(_auth_command(rnd))
        else:
            out.append(pb.PutRequest(key=_key(rnd), value=b"x", lease=123456789))  # unknown lease: refused
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_the_same_log_leaves_the_same_bytes_on_every_member(seed: int) -> None:
    snapshot = MemoryStorage()
    MVCCStore(snapshot).load()  # bootstrap once: both members start from the same snapshot
    copy = MemoryStorage()
    copy.write(list(snapshot.scan(b"", b"\xff")))
    a, b = Member(snapshot, now=0.0), Member(copy, now=98765.4321)
    outcomes_a, outcomes_b = [], []
    rnd = random.Random(seed)
    for index, command in enumerate(commands(seed), start=1):
        # who proposed it: the member itself, or a user with the auth revision it saw, maybe stale
        auth = (
            None
            if rnd.random() < 0.5
            else AuthInfo(rnd.choice(USERS), a.applier.auth.revision - rnd.randrange(2))
        )
        entry = Entry(index, 1, command, auth)
        outcomes_a.append(a.apply(entry))
        outcomes_b.append(b.apply(entry))
    assert outcomes_a == outcomes_b
    assert any(o.startswith("ok") for o in outcomes_a)
    assert any(not o.startswith("ok") for o in outcomes_a)  # both paths were taken
    assert a.contents() == b.contents()
    assert a.store.consistent_index == b.store.consistent_index == len(outcomes_a)
    assert (a.applier.auth.revision, a.applier.auth.enabled) == (
        b.applier.auth.revision,
        b.applier.auth.enabled,
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32))
def test_a_command_applied_in_steps_leaves_the_same_bytes_and_answer(seed: int) -> None:
    """Long commands are applied in steps (member/single.py); steps of 2 keys here, so deletes,
    txns and lease revocations all cross step boundaries."""
    snapshot = MemoryStorage()
    MVCCStore(snapshot).load()
    copy = MemoryStorage()
    copy.write(list(snapshot.scan(b"", b"\xff")))
    a, b = Member(snapshot, now=0.0), Member(copy, now=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reads, "STEP", 2)
        for index, command in enumerate(commands(seed), start=1):
            entry = Entry(index, 1, command)
            assert a.apply(entry) == b.apply(entry, in_steps=True), command
    assert a.contents() == b.contents()


def test_a_refused_entry_still_takes_its_index_and_changes_nothing_else() -> None:
    m = Member(MemoryStorage(), now=0.0)
    m.apply(Entry(1, 1, pb.PutRequest(key=b"k", value=b"v")))
    before = [(k, v) for k, v in m.contents() if k != L.META_CONSISTENT_INDEX]
    assert m.apply(Entry(2, 1, pb.PutRequest(key=b"k", value=b"w", lease=42))) == "LeaseNotFound"
    assert m.store.consistent_index == 2
    assert [(k, v) for k, v in m.contents() if k != L.META_CONSISTENT_INDEX] == before
    assert m.store.applied_rev == 2  # no revision was spent on the refusal


def test_apply_never_draws_a_lease_id() -> None:
    """A grant without an ID is a proposer bug: apply refuses it instead of choosing at random."""
    m = Member(MemoryStorage(), now=0.0)
    with pytest.raises(ValueError, match="without an ID"):
        m.applier.apply(Entry(1, 1, pb.LeaseGrantRequest(TTL=10)))
    assert m.lessor.leases == {}
