"""What a real peer's host runs besides its own protocols: discovery and NAT traversal.

Plain data and checks, importable without trio or libp2p; the services themselves live in
:mod:`gossiplearn.transport.libp2p_discovery` (in the libp2p thread).

- a named network (``--network NAME``): every peer of it provides a Kad-DHT key derived
  from the name and looks up the other providers of that key periodically, so peers find
  each other through any DHT node they share (bootstrap peers, relays), not only through
  one bootstrap peer;
- mDNS on the local network (``--mdns``);
- circuit relay v2: a public peer relays for others (``--relay-service``, or the
  ``gossiplearn relay`` node), a peer behind NAT reserves a slot on a relay
  (``--relay MULTIADDR``) and is reachable at ``<relay>/p2p-circuit/p2p/<its id>``;
- AutoNAT tells a peer whether others can dial it; DCUtR upgrades a relayed connection to a
  direct one where the network allows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from gossiplearn.errors import ConfigError

__all__ = [
    "NETWORK_NAME_PATTERN",
    "NetworkServices",
    "RelayLimits",
    "check_network_name",
    "check_relay_address",
    "network_key",
]

#: What a network name may look like (``--network``): lower-case letters, digits and
#: dashes, 1 to 64 of them.
NETWORK_NAME_PATTERN = re.compile(r"[a-z0-9-]{1,64}")


def check_network_name(name: str, flag: str = "--network") -> str:
    """``name`` if it is a valid network name, else ConfigError naming ``flag``."""
    if not NETWORK_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{flag} {name!r} is not a network name: use 1 to 64 of a-z, 0-9 and '-' "
            "(e.g. --network digits-lab)"
        )
    return name


def check_relay_address(address: str, flag: str = "--relay") -> str:
    """``address`` if it is a relay multiaddr ending in /p2p/<peer id>, else ConfigError."""
    parts = address.rstrip("/").split("/")
    if (
        not address.startswith("/")
        or "p2p-circuit" in parts
        or len(parts) < 3
        or parts[-2] != "p2p"
        or not parts[-1]
    ):
        raise ConfigError(
            f"{flag} {address!r} must be a relay's full address ending in /p2p/<relay peer id>, "
            "e.g. /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW... (the relay prints it on start)"
        )
    return address


def network_key(name: str) -> str:
    """The DHT key every peer of network ``name`` provides (hex of a SHA-256 digest)."""
    return hashlib.sha256(b"/gossiplearn/network/1/" + name.encode()).hexdigest()


@dataclass(frozen=True)
class RelayLimits:
    """What one relay grants (py-libp2p's ``RelayLimits``): at most ``reservations`` peers
    hold a slot at once, at most ``circuits`` relayed connections are open at once, and
    each lasts at most ``circuit_seconds`` and carries at most ``circuit_bytes`` (both
    directions together); then the relay resets it."""

    reservations: int = 32
    circuits: int = 32
    circuit_seconds: int = 600
    circuit_bytes: int = 256 * 2**20
    reservation_ttl: int = 3600


@dataclass(frozen=True)
class NetworkServices:
    """Which discovery and NAT-traversal services a libp2p host runs.

    ``dht`` runs a Kad-DHT node (server mode) with random walk; it is on whenever a
    ``network`` is named or this host relays. ``relays`` are relays to reserve a slot on
    (each a multiaddr ending in /p2p/<id>); with ``auto_relay`` a host that AutoNAT finds
    unreachable reserves on relays it is connected to. ``lookup_interval`` is the time
    between DHT provider lookups while the peer wants more neighbours.
    """

    network: str | None = None
    mdns: bool = False
    relay_service: bool = False
    relays: tuple[str, ...] = ()
    dht: bool | None = None
    autonat: bool = True
    dcutr: bool = True
    auto_relay: bool = True
    limits: RelayLimits = field(default_factory=RelayLimits)
    lookup_interval: float = 10.0
    autonat_interval: float = 60.0

    def __post_init__(self) -> None:
        if self.network is not None:
            check_network_name(self.network)
        for address in self.relays:
            check_relay_address(address)
        if self.lookup_interval <= 0 or self.autonat_interval <= 0:
            raise ConfigError("lookup_interval and autonat_interval must be > 0 seconds")

    @property
    def runs_dht(self) -> bool:
        if self.dht is not None:
            return self.dht
        return self.network is not None or self.relay_service
