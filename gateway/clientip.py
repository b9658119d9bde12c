"""Who the client is, behind trusted proxies (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["Networks", "client_ip", "is_trusted", "parse_networks"]

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(items: Sequence[str]) -> Networks:
    """``["127.0.0.1/8", "::1", "10.0.0.0/8"]`` as networks; raises ValueError naming a bad one."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return tuple(networks)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as IPv4), or None if it is not one
    (an IPv6 zone, ``%eth0``, is text of the sender's choosing: not one either)."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:  # "fe80::1%<anything>": the zone is free text
            return None
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
    return ip


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str | None:
    """The client's address, always a parsed IP address (or None): the peer, or, when the
    peer is a trusted proxy, the right-most address of ``X-Forwarded-For`` that is not itself
    a trusted proxy. A hop that is not an IP address ends the walk: what lies left of it is
    the client's own say, and the last trusted hop is reported instead."""
    peer_ip = _address(peer) if peer else None
    if peer_ip is None:
        return None
    if not forwarded_for or not any(peer_ip in net for net in trusted):
        return str(peer_ip)
    last = peer_ip
    for hop in reversed(forwarded_for.split(",")):
        ip = _address(hop)
        if ip is None:
            break
        if not any(ip in net for net in trusted):
            return str(ip)
        last = ip
    return str(last)


def is_trusted(peer: str | None, trusted: Networks) -> bool:
    """Whether the direct peer ``peer`` is one of the ``trusted`` networks."""
    ip = _address(peer) if peer else None
    return ip is not None and any(ip in net for net in trusted)
