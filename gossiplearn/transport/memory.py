"""An in-process network of transports, for tests of the asyncio Peer (no sockets, no trio).

How it works: an :class:`InMemoryNetwork` holds every :class:`InMemoryTransport` by peer
id. ``send`` looks the receiver up, waits the link's latency, rolls the link's drop
probability on the network's seeded ``random.Random`` and hands the payload to the
receiver's handler, which runs as its own task (like a real inbound stream). Invariants:
``send`` returns only once the payload was handed over, and raises
:class:`~gossiplearn.transport.base.TransportError` when it was not (unknown, stopped or
crashed peer, dropped message, no handler, oversize payload), just as an acknowledged
libp2p send would. Addresses look like ``/memory/<peer id>``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gossiplearn.transport._handlers import HandlerTasks
from gossiplearn.transport.base import Handler, ProtocolNotSpoken, TransportError
from gossiplearn.transport.framing import DEFAULT_MAX_FRAME_BYTES

ADDRESS_PREFIX = "/memory/"


@dataclass(frozen=True)
class Link:
    """Conditions on the (directed) link from one peer to another."""

    latency: float = 0.0
    drop: float = 0.0

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {self.latency}")
        if not 0.0 <= self.drop <= 1.0:
            raise ValueError(f"drop must be a probability in [0, 1], got {self.drop}")


def memory_address(peer_id: str) -> str:
    """The address of ``peer_id`` on an in-memory network."""
    return ADDRESS_PREFIX + peer_id


def parse_memory_address(address: str) -> str:
    """The peer id in a ``/memory/<peer id>`` address; raises TransportError otherwise."""
    if not address.startswith(ADDRESS_PREFIX) or len(address) == len(ADDRESS_PREFIX):
        raise TransportError(f"not an in-memory address: {address!r} (expected /memory/<peer id>)")
    peer_id = address[len(ADDRESS_PREFIX) :]
    if "/" in peer_id:
        raise TransportError(f"not an in-memory address: {address!r} (expected /memory/<peer id>)")
    return peer_id


class InMemoryNetwork:
    """A set of in-memory transports that can reach each other.

    ``latency`` and ``drop`` are the defaults for every link; :meth:`set_link` overrides
    one direction of one pair. ``seed`` seeds the drop decisions (no global RNG);
    ``sleep`` waits out latencies (tests pass a fake one to avoid real time).
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        drop: float = 0.0,
        seed: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.default_link = Link(latency, drop)
        self.sleep = sleep
        self._links: dict[tuple[str, str], Link] = {}
        self._transports: dict[str, InMemoryTransport] = {}
        self._rng = random.Random(seed)

    def transport(
        self, peer_id: str, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    ) -> InMemoryTransport:
        """Create and register the transport of a new peer."""
        if not peer_id or "/" in peer_id:
            raise ValueError(f"invalid peer id {peer_id!r}: must be non-empty and contain no '/'")
        if peer_id in self._transports:
            raise ValueError(f"peer id {peer_id!r} is already on this network")
        created = InMemoryTransport(self, peer_id, max_frame_bytes=max_frame_bytes)
        self._transports[peer_id] = created
        return created

    def set_link(
        self, sender: str, receiver: str, *, latency: float = 0.0, drop: float = 0.0
    ) -> None:
        """Set latency (seconds) and drop probability from ``sender`` to ``receiver``."""
        self._links[(sender, receiver)] = Link(latency, drop)

    def link(self, sender: str, receiver: str) -> Link:
        """The conditions from ``sender`` to ``receiver``."""
        return self._links.get((sender, receiver), self.default_link)

    def disconnect(self, peer_id: str) -> None:
        """Simulate a crash of ``peer_id``: it drops every connection, its in-flight
        handlers are cancelled, and sends to or from it fail until :meth:`restore`."""
        self._get(peer_id)._crash()

    def restore(self, peer_id: str) -> None:
        """Bring a crashed peer back (its handlers are kept; connections are not)."""
        self._get(peer_id)._crashed = False

    def peers(self) -> list[str]:
        """Ids of every registered peer."""
        return list(self._transports)

    def _get(self, peer_id: str) -> InMemoryTransport:
        try:
            return self._transports[peer_id]
        except KeyError:
            raise TransportError(f"unknown peer {peer_id!r} on this in-memory network") from None

    def _reachable(self, peer_id: str) -> InMemoryTransport:
        target = self._get(peer_id)
        if not target.running:
            raise TransportError(f"peer {peer_id!r} is not running")
        return target

    def _dropped(self, link: Link) -> bool:
        return link.drop > 0 and self._rng.random() < link.drop


class InMemoryTransport:
    """A :class:`~gossiplearn.transport.base.Transport` on an :class:`InMemoryNetwork`."""

    def __init__(
        self,
        network: InMemoryNetwork,
        peer_id: str,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.network = network
        self.max_frame_bytes = max_frame_bytes
        self._peer_id = peer_id
        self._handlers: dict[str, Handler] = {}
        self._connected: set[str] = set()
        self._tasks = HandlerTasks()
        self._started = False
        self._crashed = False

    @property
    def peer_id(self) -> str:
        """This peer's id on the network."""
        return self._peer_id

    @property
    def addresses(self) -> list[str]:
        """The one address of this peer: ``/memory/<peer id>``."""
        return [memory_address(self._peer_id)]

    @property
    def running(self) -> bool:
        """Started, not stopped, and not crashed."""
        return self._started and not self._crashed

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Deliver inbound messages on ``protocol`` to ``handler``."""
        self._handlers[protocol] = handler

    async def start(self) -> None:
        """Start accepting messages."""
        self._started = True

    async def stop(self) -> None:
        """Drop every connection and cancel in-flight handlers; idempotent."""
        self._started = False
        self._drop_connections()
        await self._tasks.cancel_all()

    async def connect(self, address: str) -> str:
        """'Dial' ``address``; return the remote peer id."""
        self._check_running()
        peer_id = parse_memory_address(address)
        if peer_id == self._peer_id:
            raise TransportError("cannot connect to ourselves")
        target = self.network._reachable(peer_id)
        self._connected.add(peer_id)
        target._connected.add(self._peer_id)
        return peer_id

    async def send(self, peer: str, protocol: str, payload: bytes) -> None:
        """Deliver ``payload`` to ``peer`` after the link latency, or raise TransportError."""
        self._check_running()
        if len(payload) > self.max_frame_bytes:
            raise TransportError(
                f"payload of {len(payload)} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        target = self.network._reachable(peer)
        link = self.network.link(self._peer_id, peer)
        if link.latency > 0:
            await self.network.sleep(link.latency)
            self._check_running()
            target = self.network._reachable(peer)
        if self.network._dropped(link):
            raise TransportError(f"message to {peer} lost (simulated drop on the link)")
        self._connected.add(peer)
        target._connected.add(self._peer_id)
        target._deliver(self._peer_id, protocol, payload)

    def connected_peers(self) -> list[str]:
        """Peers with an open 'connection' to or from this one."""
        return sorted(self._connected)

    async def speaks(self, peer: str, protocol: str) -> bool | None:
        """Whether ``peer`` handles ``protocol`` (None if it is not on the network)."""
        target = self.network._transports.get(peer)
        return None if target is None else protocol in target._handlers

    # ---- internals ------------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self.running:
            state = "crashed (network.disconnect)" if self._crashed else "not started"
            raise TransportError(f"transport of {self._peer_id} is {state}")

    def _deliver(self, sender: str, protocol: str, payload: bytes) -> None:
        if len(payload) > self.max_frame_bytes:
            raise TransportError(
                f"{self._peer_id} rejected {len(payload)} bytes: over its "
                f"max_frame_bytes={self.max_frame_bytes}"
            )
        handler = self._handlers.get(protocol)
        if handler is None:
            raise ProtocolNotSpoken(f"{self._peer_id} has no handler for {protocol}")
        self._tasks.spawn(handler, sender, protocol, payload)

    def _crash(self) -> None:
        self._crashed = True
        self._drop_connections()
        self._tasks.cancel_nowait()

    def _drop_connections(self) -> None:
        for peer in self._connected:
            other = self.network._transports.get(peer)
            if other is not None:
                other._connected.discard(self._peer_id)
        self._connected.clear()
