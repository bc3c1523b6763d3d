"""The layers every RPC passes, outermost first: recovery -> limits -> auth -> handler.

Each is a transport-neutral core, a `Layer` (methods.py) wrapping a servicer
method that takes (request, Call); rpc.py binds the wrapped method to gRPC.
"""

from __future__ import annotations

from metastore_core.server.layers.auth import AuthLayer
from metastore_core.server.layers.clients import ClientLimits
from metastore_core.server.layers.limits import Limiter
from metastore_core.server.layers.metrics import RequestMetrics
from metastore_core.server.layers.recovery import Recovery
from metastore_core.server.methods import Layer


def reliability_layers(
    recovery: Recovery,
    limiter: Limiter,
    metrics: RequestMetrics | None,
    auth: AuthLayer | None = None,
    clients: ClientLimits | None = None,
) -> list[Layer]:
    """recovery -> limits -> auth -> per-client limits -> handler (the list is innermost first;
    a layer not given is left out).

    The per-client limits sit inside auth so that, once auth sets Call.auth, a client is its
    user; until then it is its host."""
    inner = [] if clients is None else [clients.layer()]
    if auth is not None:
        inner.append(auth.layer())
    return [*inner, limiter.layer(), recovery.layer(metrics)]
