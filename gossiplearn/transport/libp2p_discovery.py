"""Discovery and NAT traversal for a libp2p host, with py-libp2p's own services.

How it works: :class:`HostServices` runs in the libp2p thread, beside the host of a
:class:`~gossiplearn.transport.libp2p.Libp2pTransport`. It starts py-libp2p's Kad-DHT
(server mode, random walk), circuit relay v2 (the STOP side always, the HOP side when this
host relays, bounded by py-libp2p's ``RelayLimits``), DCUtR (its own auto-drive loop tries
to upgrade every relayed connection) and AutoNAT (serving dial-backs, and asking connected
peers about us), plus mDNS on request. Its loops: provide the network's DHT key and look up
its providers; keep a reservation on each given relay (and on relays found, when AutoNAT
says we are not reachable); ask AutoNAT servers about us; snapshot connection kinds.

Peers found (DHT providers, mDNS) are queued for the asyncio side (:meth:`drain_found`),
which treats them as hearsay under a per-source quota. Nothing here is ever sent models.

Invariants: trio objects are touched only in the libp2p thread; the asyncio side reads
only :attr:`snapshot` (replaced whole, never mutated), the ``found`` deque (thread-safe
appends/pops) and plain counters.

py-libp2p 0.8.1 facts relied on (measured on 127.0.0.1): ``KadDHT.provide`` and
``find_providers`` work between three hosts in ~0.1 s once each has a routing-table peer,
but the DHT never adds connected peers to its routing table by itself (done here);
``find_providers`` answers from the local store alone once it holds any record (after our
own ``provide`` it always does), so peers that cannot dial each other, and so never store
each other's records, would never meet: the connected DHT servers are asked directly; the
swarm drops ``/p2p-circuit`` addresses from every dial (``Swarm.dial_peer``), so circuit
addresses are dialled with ``CircuitV2Transport.dial`` directly; that transport makes a
reservation before every dial when the CLIENT role is set, so the role is left out and
reservations are made explicitly; provider records carry ``host.get_addrs()`` only, whose
``/p2p/`` stripping mangles circuit addresses, so a NAT'd peer's provider record lists
its (unreachable) listen addresses: dialers also try ``<relay>/p2p-circuit/p2p/<id>``
through relays they know; AutoNAT needs 4 agreeing servers by default (set to 1 here:
small networks seldom have 4 servers).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, cast

import multiaddr
import trio
from libp2p.abc import IHost, INetStream, IRawConnection
from libp2p.custom_types import TProtocol
from libp2p.host.autonat import AutoNATService, AutoNATStatus
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID
from libp2p.host.basic_host import BasicHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT, _encode_key
from libp2p.kad_dht.utils import sort_peer_ids_by_distance
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits as Libp2pRelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from gossiplearn.transport.base import TransportError
from gossiplearn.transport.discovery import NetworkServices, network_key

__all__ = ["HostServices", "NetworkSnapshot", "is_circuit_address"]

log = logging.getLogger("gossiplearn.transport.discovery")

#: Found peers waiting for the asyncio side (older ones are dropped past this).
_MAX_FOUND = 256
_PROVIDERS_PER_LOOKUP = 20
#: Connected DHT servers asked directly for the network's providers, and for how long.
_LOOKUP_SERVERS = 3
_QUERY_TIMEOUT = 5.0
#: Re-announce the network's key every this many lookups.
_PROVIDE_EVERY = 6
#: Seconds between attempts while a step has nothing to work with yet.
_SHORT_WAIT = 1.0
_STEP_TIMEOUT = 30.0
_ROUTING_FEED = 64
_AUTO_RELAYS = 2
_RESERVE_RETRY_MAX = 60.0
#: Seconds an AutoNAT dial-back may take to open a TCP connection.
_DIAL_BACK_TIMEOUT = 5.0
#: Peers whose DCUtR outcome is remembered (the first ones met over a relay).
_MAX_DCUTR = 256

_STATUS = {
    AutoNATStatus.UNKNOWN: "unknown",
    AutoNATStatus.PUBLIC: "public",
    AutoNATStatus.PRIVATE: "private",
}


_REACHABILITY_TEXT = {
    "public": "reachable from outside",
    "private": "NOT reachable from outside (a relay reservation makes it reachable)",
    "unknown": "of unknown reachability",
}


def is_circuit_address(address: str) -> bool:
    return "/p2p-circuit" in address


@dataclass(frozen=True)
class NetworkSnapshot:
    """What the services know, for status and metrics (replaced whole, never mutated)."""

    reachability: str = "unknown"
    #: Relays holding a reservation for us -> our circuit address through each.
    reservations: dict[str, str] = field(default_factory=dict)
    #: Connected peers -> "direct", "relayed" or "both".
    connections: dict[str, str] = field(default_factory=dict)
    dht_peers: int = 0
    #: Peers DCUtR upgraded to a direct connection.
    upgraded: tuple[str, ...] = ()
    #: DCUtR's outcome for every peer ever connected over a relay: "direct" once a direct
    #: connection to it appeared, else "relayed" (kept after the peer disconnects).
    dcutr: dict[str, str] = field(default_factory=dict)
    #: Circuits this host relays for others right now (relay service only).
    relaying: int = 0


class _Counted:
    """A stream or raw connection whose read and written bytes are added to ``counts``."""

    def __init__(self, inner: Any, counts: Counter[str]) -> None:
        self._inner = inner
        self._counts = counts

    async def read(self, n: int | None = None) -> bytes:
        data = await self._inner.read(n)
        self._counts["relayed_bytes_in"] += len(data)
        return cast(bytes, data)

    async def write(self, data: bytes) -> None:
        await self._inner.write(data)
        self._counts["relayed_bytes_out"] += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingCircuitTransport(CircuitV2Transport):
    """Outbound circuits whose bytes are counted."""

    counts: Counter[str]

    async def dial_peer_info(
        self, dest_info: PeerInfo, *, relay_info: PeerInfo | None = None
    ) -> IRawConnection:
        raw = await super().dial_peer_info(dest_info, relay_info=relay_info)
        return cast(IRawConnection, _Counted(raw, self.counts))


class _CountingCircuitProtocol(CircuitV2Protocol):
    """Inbound circuits whose bytes are counted."""

    counts: Counter[str]

    async def handle_incoming_connection(self, stream: INetStream, remote_peer_id: bytes) -> None:
        counted = cast(INetStream, _Counted(stream, self.counts))
        await super().handle_incoming_connection(counted, remote_peer_id)


class _DialBackAutoNAT(AutoNATService):
    """An AutoNAT server that really dials back. py-libp2p's ``_try_dial`` calls
    ``host.connect``, which returns the connection the request came on, so every asker is
    told it is reachable (measured in the lab: peers behind NAT were "public"). Here a
    fresh TCP connection to each address (already limited to the asker's observed IP) must
    open within a few seconds; it is closed at once."""

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        for raw in addrs:
            with contextlib.suppress(Exception):
                address = multiaddr.Multiaddr(raw)
                names = [p.name for p in address.protocols()]
                if "tcp" not in names or is_circuit_address(str(address)):
                    continue
                host = address.value_for_protocol("ip4" if "ip4" in names else "ip6")
                port = int(address.value_for_protocol("tcp"))
                with trio.move_on_after(_DIAL_BACK_TIMEOUT):
                    stream = await trio.open_tcp_stream(host, port)
                    await stream.aclose()
                    return bytes(raw)
        return None


class HostServices:
    """Discovery and NAT traversal beside one libp2p host (libp2p thread only)."""

    def __init__(self, host: IHost, options: NetworkServices) -> None:
        self.host = host
        self.options = options
        self.own = host.get_id()
        #: Bytes over relayed connections: relayed_bytes_in / relayed_bytes_out.
        self.counts: Counter[str] = Counter()
        #: (peer id, addresses, source) found and not yet taken by the asyncio side.
        self.found: deque[tuple[str, list[str], str]] = deque(maxlen=_MAX_FOUND)
        self.snapshot = NetworkSnapshot()
        self._reservations: dict[str, str] = {}
        self._dcutr: dict[str, str] = {}  # the snapshot's dcutr (libp2p thread only)
        self._relay_addresses: dict[str, str] = {}  # relay id -> the address we reach it at
        self._reachability = "unknown"
        self._dht: KadDHT | None = None
        self._autonat: AutoNATService | None = None
        self._dcutr_service: DCUtRProtocol | None = None
        self._circuit: _CountingCircuitTransport | None = None
        self._protocol: _CountingCircuitProtocol | None = None
        self._nursery: trio.Nursery | None = None

    # ---- running -----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start every service; runs until cancelled."""
        options = self.options
        limits = options.limits
        relay_limits = Libp2pRelayLimits(
            duration=limits.circuit_seconds,
            data=limits.circuit_bytes,
            max_circuit_conns=limits.circuits,
            max_reservations=limits.reservations,
            reservation_ttl=limits.reservation_ttl,
        )
        protocol = _CountingCircuitProtocol(
            self.host, limits=relay_limits, allow_hop=options.relay_service
        )
        protocol.counts = self.counts
        roles = RelayRole.STOP | RelayRole.HOP if options.relay_service else RelayRole.STOP
        circuit = _CountingCircuitTransport(
            self.host, protocol, RelayConfig(roles=roles, limits=relay_limits)
        )
        circuit.counts = self.counts
        self._protocol, self._circuit = protocol, circuit
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(background_trio_service(protocol))
            if options.runs_dht:
                self._dht = KadDHT(self.host, DHTMode.SERVER, enable_random_walk=True)
                await stack.enter_async_context(background_trio_service(self._dht))
            if options.dcutr:
                self._dcutr_service = DCUtRProtocol(self.host)
                await stack.enter_async_context(background_trio_service(self._dcutr_service))
            if options.autonat:
                self._autonat = _DialBackAutoNAT(cast(BasicHost, self.host), confirmations=1)
            if options.mdns:
                stack.enter_context(self._mdns())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                nursery.start_soon(self._snapshot_loop)
                if self._dht is not None:
                    nursery.start_soon(self._dht_loop)
                if self._autonat is not None:
                    nursery.start_soon(self._autonat_loop)
                for address in options.relays:
                    nursery.start_soon(self._keep_reservation, address)
                if options.auto_relay and not options.relay_service:
                    nursery.start_soon(self._auto_relay_loop)

    # ---- the asyncio side's questions (any thread) -----------------------------------------

    def drain_found(self) -> list[tuple[str, list[str], str]]:
        """Peers found since the last call: (peer id, addresses, source)."""
        taken = []
        while True:
            try:
                taken.append(self.found.popleft())
            except IndexError:
                return taken

    def circuit_addresses(self) -> list[str]:
        """Our addresses through the relays that hold a reservation for us."""
        return list(self.snapshot.reservations.values())

    def relay_routes(self, peer: str) -> list[str]:
        """``peer``'s addresses through each relay we know (it may hold a slot there)."""
        return [
            f"{address}/p2p-circuit/p2p/{peer}"
            for relay, address in list(self._relay_addresses.items())
            if relay != peer
        ]

    # ---- dialling through a relay (libp2p thread) --------------------------------------------

    async def dial_circuit(self, address: str) -> str:
        """Connect through a relay: ``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<peer>``."""
        circuit = self._circuit
        if circuit is None:
            raise TransportError("relayed dials need the relay services (not started yet)")
        try:
            maddr = multiaddr.Multiaddr(address)
            relay_part, peer = circuit.parse_circuit_ma(maddr)
            relay = info_from_p2p_addr(relay_part)
        except Exception as error:
            raise TransportError(
                f"invalid relayed address {address!r}: {error} (expected "
                "/ip4/<relay ip>/tcp/<port>/p2p/<relay id>/p2p-circuit/p2p/<peer id>)"
            ) from None
        if peer == self.own:
            raise TransportError("cannot connect to ourselves")
        if self.host.get_network().get_connections(peer):
            return peer.to_base58()
        self.host.get_peerstore().add_addrs(relay.peer_id, relay.addrs, 0)
        self._relay_addresses.setdefault(relay.peer_id.to_base58(), str(relay_part))
        try:
            await circuit.dial(maddr)
        except Exception as error:
            raise TransportError(
                f"cannot connect to {address} through relay {relay.peer_id}: {error}"
            ) from error
        log.info("connected to %s through relay %s", peer, relay.peer_id)
        return peer.to_base58()

    def note_connected(self, address: str) -> None:
        """A direct dial to ``address`` succeeded: remember relays among such peers."""
        with contextlib.suppress(Exception):
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
            if self._speaks(info.peer_id, HOP_PROTOCOL_ID):
                self._relay_addresses.setdefault(info.peer_id.to_base58(), address)

    # ---- loops -------------------------------------------------------------------------------

    async def _dht_loop(self) -> None:
        """Feed connected peers to the routing table; provide the network key; look it up."""
        dht = self._dht
        assert dht is not None
        key = network_key(self.options.network) if self.options.network else None
        lookups = 0
        while True:
            try:
                with trio.fail_after(_STEP_TIMEOUT):
                    await self._feed_routing_table(dht)
                    if key is not None and dht.get_routing_table_size() > 0:
                        if lookups % _PROVIDE_EVERY == 0 and await dht.provide(key):
                            log.info("announced network %r on the DHT", self.options.network)
                        await self._lookup(dht, key)
                        lookups += 1
            except trio.TooSlowError:
                log.info("a DHT step took over %.0f s; retrying", _STEP_TIMEOUT)
            except Exception as error:
                log.info("DHT step failed: %s", error)
            await trio.sleep(self.options.lookup_interval if lookups else _SHORT_WAIT)

    async def _feed_routing_table(self, dht: KadDHT) -> None:
        """py-libp2p's DHT learns of a peer only when the peer queries it: add every
        connected DHT server (identify tells which peers speak the DHT protocol)."""
        network = self.host.get_network()
        connected = [p for p, conns in list(network.connections.items()) if conns]
        for peer in connected[:_ROUTING_FEED]:
            if not dht.routing_table.peer_in_table(peer):
                with contextlib.suppress(Exception):
                    await dht.add_peer(peer)

    async def _lookup(self, dht: KadDHT, key: str) -> None:
        providers = await self._ask_connected(dht, key)
        self._take_providers(providers)
        self._take_providers(await dht.find_providers(key, _PROVIDERS_PER_LOOKUP))

    async def _ask_connected(self, dht: KadDHT, key: str) -> list[PeerInfo]:
        """The providers of ``key`` that the connected DHT servers closest to it know.
        py-libp2p's ``find_providers`` answers from the local store alone once it holds a
        record, and it always holds our own after ``provide``: peers that cannot dial each
        other (behind NAT), and so never store each other's records, would never meet."""
        encoded = _encode_key(key)
        connected = [p for p in self._connected() if dht.routing_table.peer_in_table(p)]
        closest = sort_peer_ids_by_distance(encoded, connected)[:_LOOKUP_SERVERS]
        found: list[PeerInfo] = []

        async def ask(peer: ID) -> None:
            with contextlib.suppress(Exception), trio.move_on_after(_QUERY_TIMEOUT):
                store = dht.provider_store
                providers, _ = await store._get_providers_from_peer_with_closers(peer, encoded)
                found.extend(providers)

        async with trio.open_nursery() as nursery:
            for peer in closest:
                nursery.start_soon(ask, peer)
        return found

    def _take_providers(self, providers: list[PeerInfo]) -> None:
        seen: set[ID] = set()
        for info in providers:
            if info.peer_id == self.own or info.peer_id in seen:
                continue
            seen.add(info.peer_id)
            peer = info.peer_id.to_base58()
            addresses = [_with_peer(str(a), peer) for a in info.addrs]
            addresses += self.relay_routes(peer)
            if addresses:
                self.found.append((peer, addresses, "dht"))

    async def _autonat_loop(self) -> None:
        """Ask connected AutoNAT servers whether they can dial us back."""
        autonat = self._autonat
        assert autonat is not None
        while True:
            servers = [p for p in self._connected() if self._speaks(p, AUTONAT_PROTOCOL_ID)][:4]
            if not servers:
                await trio.sleep(_SHORT_WAIT)
                continue
            autonat.dial_results.clear()
            with contextlib.suppress(Exception), trio.move_on_after(_STEP_TIMEOUT):
                await autonat.check_reachability(servers)
            status = _STATUS.get(autonat.get_status(), "unknown")
            if status != self._reachability:
                level = logging.WARNING if status == "private" else logging.INFO
                text = _REACHABILITY_TEXT[status]
                log.log(level, "AutoNAT: this peer is %s (asked %d peer(s))", text, len(servers))
                self._reachability = status
            await trio.sleep(self.options.autonat_interval)

    async def _keep_reservation(self, address: str) -> None:
        """Hold a reservation on the relay at ``address`` for the whole run."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        relay = info.peer_id.to_base58()
        self._relay_addresses[relay] = address
        delay = _SHORT_WAIT
        while True:
            if relay not in self._reservations or not self.host.get_network().get_connections(
                info.peer_id
            ):
                self._reservations.pop(relay, None)
                try:
                    with trio.fail_after(_STEP_TIMEOUT):
                        await self.host.connect(info)
                        await self._reserve(info.peer_id, address)
                    delay = _SHORT_WAIT
                except Exception as error:
                    log.warning(
                        "no reservation on relay %s: %s; retrying in %.0f s",
                        address,
                        _short(error),
                        delay,
                    )
                    await trio.sleep(delay)
                    delay = min(delay * 2, _RESERVE_RETRY_MAX)
                    continue
            await trio.sleep(self.options.lookup_interval)

    async def _auto_relay_loop(self) -> None:
        """When AutoNAT says others cannot dial us, reserve on relays we are connected to."""
        while True:
            await trio.sleep(self.options.lookup_interval)
            if self._reachability != "private" or len(self._reservations) >= _AUTO_RELAYS:
                continue
            for peer in self._connected():
                relay = peer.to_base58()
                if relay in self._reservations or not self._speaks(peer, HOP_PROTOCOL_ID):
                    continue
                addresses = self.host.get_peerstore().addrs(peer)
                if not addresses:
                    continue
                address = _with_peer(str(addresses[0]), relay)
                with contextlib.suppress(Exception), trio.fail_after(_STEP_TIMEOUT):
                    await self._reserve(peer, address)
                if len(self._reservations) >= _AUTO_RELAYS:
                    break

    async def _reserve(self, relay: ID, address: str) -> None:
        circuit, nursery = self._circuit, self._nursery
        assert circuit is not None and nursery is not None
        stream = await self.host.new_stream(relay, [HOP_PROTOCOL_ID])
        try:
            if not await circuit.reserve(stream, relay, nursery):
                raise TransportError("the relay refused the reservation")
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        name = relay.to_base58()
        self._relay_addresses[name] = address
        self._reservations[name] = f"{address}/p2p-circuit/p2p/{self.own.to_base58()}"
        log.warning("reserved a slot on relay %s: reachable at %s", name, self._reservations[name])

    async def _snapshot_loop(self) -> None:
        while True:
            self.snapshot = self._take_snapshot()
            await trio.sleep(_SHORT_WAIT)

    def _take_snapshot(self) -> NetworkSnapshot:
        network = self.host.get_network()
        kinds: dict[str, str] = {}
        for peer, conns in list(network.connections.items()):
            seen = {"relayed" if _relayed(c) else "direct" for c in conns}
            if seen:
                kinds[peer.to_base58()] = seen.pop() if len(seen) == 1 else "both"
        dcutr = self._dcutr_service
        upgraded = tuple(sorted(p.to_base58() for p in dcutr._direct_connections)) if dcutr else ()
        self._note_dcutr(kinds, upgraded)
        protocol = self._protocol
        return NetworkSnapshot(
            reachability=self._reachability,
            reservations=dict(self._reservations),
            connections=kinds,
            dht_peers=self._dht.get_routing_table_size() if self._dht is not None else 0,
            upgraded=upgraded,
            dcutr=dict(self._dcutr),
            relaying=len(protocol._active_relays) if protocol is not None else 0,
        )

    def _note_dcutr(self, kinds: dict[str, str], upgraded: tuple[str, ...]) -> None:
        """Remember, per peer met over a relay, whether a direct connection followed."""
        for peer, kind in kinds.items():
            if kind != "direct" and (peer in self._dcutr or len(self._dcutr) < _MAX_DCUTR):
                self._dcutr.setdefault(peer, "relayed")
        for peer, kind in kinds.items():
            direct = kind != "relayed" or peer in upgraded
            if direct and self._dcutr.get(peer) == "relayed":
                self._dcutr[peer] = "direct"
                log.info("DCUtR: %s is now connected directly (was relayed)", peer)

    # ---- helpers -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mdns(self) -> Any:
        """Announce this host on the LAN and report peers heard there (best effort)."""
        from libp2p.discovery.events.peerDiscovery import peerDiscovery
        from libp2p.discovery.mdns.mdns import MDNSDiscovery

        def heard(info: PeerInfo) -> None:
            if info.peer_id != self.own:
                peer = info.peer_id.to_base58()
                self.found.append((peer, [_with_peer(str(a), peer) for a in info.addrs], "mdns"))

        try:
            addrs = self.host.get_transport_addrs()
            port = int(addrs[0].value_for_protocol("tcp")) if addrs else 4001
            # Our addresses as we tell them (wildcards expanded, or --announce): given the
            # host, py-libp2p announces its raw listen addresses, e.g. /ip4/0.0.0.0/...
            tell = [str(a) for a in self.host.get_addrs() if not is_circuit_address(str(a))]
            mdns = MDNSDiscovery(self.host.get_network(), port=port, listen_addrs=tell)
            mdns.start()
        except Exception as error:
            log.warning("mDNS could not start: %s (discovery goes on without it)", error)
            yield
            return
        peerDiscovery.register_peer_discovered_handler(heard)
        log.info("mDNS: announcing this peer on the local network")
        try:
            yield
        finally:
            peerDiscovery.unregister_peer_discovered_handler(heard)
            with contextlib.suppress(Exception):
                mdns.stop()

    def _connected(self) -> list[ID]:
        network = self.host.get_network()
        return [p for p, conns in list(network.connections.items()) if conns]

    def _speaks(self, peer: ID, protocol: TProtocol) -> bool:
        try:
            return str(protocol) in (self.host.get_peerstore().get_protocols(peer) or [])
        except Exception:
            return False


def _relayed(conn: Any) -> bool:
    with contextlib.suppress(Exception):
        return any(is_circuit_address(str(a)) for a in conn.get_transport_addresses())
    return False


def _with_peer(address: str, peer: str) -> str:
    return address if address.endswith(f"/p2p/{peer}") else f"{address}/p2p/{peer}"


def _short(error: BaseException) -> str:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
