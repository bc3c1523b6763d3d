"""Who is on the other end of a connection, from the transport's peer string (pure)."""

from __future__ import annotations

import ipaddress


def peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5000' / 'ipv6:[::1]:5000' -> the address; anything else as it is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return peer


def is_loopback(peer: str) -> bool:
    """Is the caller on this host (a loopback address or a unix socket)?"""
    if peer.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(peer_host(peer)).is_loopback
    except ValueError:
        return False
