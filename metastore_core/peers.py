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


def is_loopback_host(host: str) -> bool:
    """Is host (an address, or localhost) this host's loopback?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback(peer: str) -> bool:
    """Is the caller on this host (a loopback address or a unix socket)?"""
    return peer.startswith("unix:") or is_loopback_host(peer_host(peer))
