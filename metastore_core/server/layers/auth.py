"""The auth layer of the RPC chain (recovery -> limits -> auth -> handler).

It says who is calling and sets `Call.auth`, which servicers hand to the node, so permissions are
checked where etcd checks them: at apply time for writes, at read time for reads. Here only the
door is kept, by the method's policy (methods.py):
- a token (metadata `token`, or `authorization` as etcd's gateway sends it) names a user; a token
  that names no one is refused, even with auth off, as etcd does;
- with --client-cert-auth and no token, the verified client certificate's CN is the user;
- with auth on, a method that needs credentials refuses a caller naming no one
  ("user name is empty"), admin methods need the root role;
- with auth off, `local` methods (the Admin service) answer loopback callers only.
"""

from __future__ import annotations

from metastore_core import errors
from metastore_core.engine.auth import ANONYMOUS
from metastore_core.engine.entry import AuthInfo
from metastore_core.member.node import Node
from metastore_core.peers import is_loopback
from metastore_core.server.methods import Behaviour, Call, Layer, MethodInfo, check_first


class AuthLayer:
    """Resolves the caller and keeps the door, per method policy."""

    def __init__(self, node: Node | None = None, client_cert_auth: bool = False) -> None:
        self.node = node  # the server sets it once the member is up, before it serves
        self.client_cert_auth = client_cert_auth

    def _node(self) -> Node:
        if self.node is None:
            raise RuntimeError("the auth layer serves before the member is up")
        return self.node

    def who(self, call: Call) -> AuthInfo:
        """The caller as the request presents it (not yet checked against the auth state)."""
        auth = self._node().auth
        token = call.metadata("token") or call.metadata("authorization")
        if token:
            return auth.token_info(token)
        if self.client_cert_auth:
            info = auth.cert_info(call.common_name())
            if info is not None:
                return info
        return ANONYMOUS

    def admit(self, info: MethodInfo, call: Call) -> None:
        """Set call.auth, and refuse a caller the method's policy does not let in."""
        call.auth = who = self.who(call)
        policy = info.policy
        node = self._node()
        if node.auth.enabled:
            if policy.admin:
                node.check_admin(who)
            else:
                node.auth.store.check_user(who)
        elif policy.local and not is_loopback(call.peer()):
            raise errors.AdminLocalOnly()

    def layer(self) -> Layer:
        def wrap(info: MethodInfo, fn: Behaviour) -> Behaviour:
            if not info.policy.auth:
                return fn
            admit = self.admit
            return check_first(info, fn, lambda call: admit(info, call))

        return wrap
