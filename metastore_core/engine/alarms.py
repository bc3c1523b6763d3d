"""Alarms (NOSPACE, CORRUPT): a persisted set of (member, type) pairs."""

from __future__ import annotations

from metastore_core.mvcc.store import MVCCStore
from metastore_core.pb.etcdserverpb import rpc_pb2 as pb
from metastore_core.storage import layout as L


class Alarms:
    """Active alarms; changes are staged into the store's next batch."""

    def __init__(self, store: MVCCStore) -> None:
        self.store = store
        self.active: set[tuple[int, int]] = set()

    def load(self) -> None:
        start = L.ALARM_PREFIX
        self.active = {L.parse_alarm_key(k) for k, _ in self.store.storage.scan(start, L.prefix_end(start))}

    def activate(self, member_id: int, alarm: int) -> bool:
        """Raise an alarm; False when it was already active."""
        if (member_id, alarm) in self.active:
            return False
        self.active.add((member_id, alarm))
        self.store.stage(L.alarm_key(member_id, alarm), b"")
        return True

    def deactivate(self, member_id: int, alarm: int) -> bool:
        if (member_id, alarm) not in self.active:
            return False
        self.active.discard((member_id, alarm))
        self.store.stage(L.alarm_key(member_id, alarm), None)
        return True

    def get(self, alarm: int = pb.NONE) -> list[pb.AlarmMember]:
        out = []
        for m, a in sorted(self.active):
            if alarm in (pb.NONE, a):
                out.append(pb.AlarmMember(memberID=m, alarm=a))  # type: ignore[arg-type]
        return out

    def has(self, alarm: int) -> bool:
        return any(a == alarm for _, a in self.active)

    def describe(self) -> list[str]:
        """etcd's Status.errors strings (gogoproto String(), trailing space included)."""
        out = []
        for m, a in sorted(self.active):
            name = pb.AlarmType.Name(a)  # type: ignore[arg-type]
            out.append(f"memberID:{m} alarm:{name} " if m else f"alarm:{name} ")
        return out
