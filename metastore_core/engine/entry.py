"""What the apply path consumes: a command in a log entry, with who sent it.

Commands are etcd's own request messages (PutRequest, TxnRequest,
LeaseGrantRequest, AlarmRequest, ...), as etcd's raft log carries them.
An entry is fully decided before it is proposed: nothing random or read
from a clock is left for apply to choose (see member/consensus.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Command = Any  # one of the request messages Applier dispatches on


@dataclass(frozen=True, slots=True)
class AuthInfo:
    """Who proposed a command, checked against the auth state at apply time (as etcd does)."""

    user: str
    auth_revision: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: its index becomes the store's consistent_index when applied."""

    index: int
    term: int
    command: Command
    auth: AuthInfo | None = None
