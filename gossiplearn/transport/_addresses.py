"""Which addresses a libp2p host tells others, and which of a peer's addresses it dials.

py-libp2p 0.8.1 facts this module answers (measured in the lab, tests/lab/):

- A host listening on ``/ip4/0.0.0.0/tcp/4001`` advertises that wildcard itself through
  identify (``host.get_addrs()``), and identify *replaces* the peer's addresses in the
  receiver's peerstore. Every neighbour then knows us as ``0.0.0.0:4001``, which on its
  own machine is itself: once the connection is gone (a partition), each re-dial reached
  the dialler's own port and failed with "wrong peer id" (or a failed security
  negotiation), and the swarm then cleared all the peer's addresses. The two sides of a
  healed partition never found each other again. So we advertise the wildcard expanded
  to interface addresses (:func:`advertised`), and drop unusable addresses other peers
  may still send before we dial (:func:`dial_order`).
- ``Swarm.dial_peer`` dials only the first TCP address in the peerstore, so the address
  that last worked first-hand goes first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import multiaddr
from libp2p.utils.address_validation import expand_wildcard_address


def usable(address: multiaddr.Multiaddr) -> bool:
    """False for an address no other machine can dial: link-local IPv6 (it needs a zone),
    or an unexpanded wildcard."""
    host_part = address.value_for_protocol(address.protocols()[0].code)
    try:
        ip = ipaddress.ip_address(host_part.split("%")[0])
    except ValueError:
        return True  # a DNS name
    return not (ip.is_unspecified or (ip.version == 6 and ip.is_link_local))


def is_loopback(address: multiaddr.Multiaddr) -> bool:
    host_part = address.value_for_protocol(address.protocols()[0].code)
    try:
        return ipaddress.ip_address(host_part.split("%")[0]).is_loopback
    except ValueError:
        return False


def advertised(addresses: Sequence[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """``addresses`` as others can dial them: wildcards (0.0.0.0, ::) expanded to this
    machine's interface addresses, unusable ones left out, IPv4 first, loopback last."""
    result: list[multiaddr.Multiaddr] = []
    for address in sorted(addresses, key=lambda a: a.protocols()[0].name != "ip4"):
        host_part = address.value_for_protocol(address.protocols()[0].code)
        expanded = [address]
        if host_part in ("0.0.0.0", "::"):
            expanded = sorted(expand_wildcard_address(address), key=is_loopback)
        result.extend(a for a in expanded if usable(a) and a not in result)
    return result


def dial_order(
    known: Sequence[multiaddr.Multiaddr], worked: multiaddr.Multiaddr | None
) -> list[multiaddr.Multiaddr]:
    """A peer's addresses in the order to dial them: the one that last ``worked`` first,
    then the others it told us; unusable ones (a wildcard: it would dial ourselves) out."""
    result: list[multiaddr.Multiaddr] = []
    seen: set[str] = set()
    for address in [] if worked is None else [worked]:
        result.append(address)
        seen.add(_bare(address))
    for address in known:
        if usable(address) and _bare(address) not in seen:
            result.append(address)
            seen.add(_bare(address))
    return result


def _bare(address: multiaddr.Multiaddr) -> str:
    """``address`` without a trailing ``/p2p/<id>`` (identify's addresses carry one)."""
    text = str(address)
    if address.protocols()[-1].name == "p2p":
        return text.rsplit("/p2p/", 1)[0]
    return text
