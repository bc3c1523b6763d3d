"""The auth layer of the RPC chain (recovery -> limits -> auth -> handler).

A pass-through until auth lands: it returns the handler unchanged, so it
costs nothing per call. It will read the token from `Call.metadata`, check
the method's policy (methods.py: auth, admin) and set `Call.auth`, which
servicers hand to the node so apply checks permissions (as etcd does).
"""

from __future__ import annotations

from metastore_core.server.methods import Behaviour, MethodInfo


def auth_layer(info: MethodInfo, fn: Behaviour) -> Behaviour:
    """Check the caller's token and permissions (not yet: auth is off)."""
    return fn
