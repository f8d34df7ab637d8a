"""Setups of discovery and relay tests, reusable from other labs (e.g. network namespaces).

Every function takes the host address to listen on (127.0.0.1 here; a namespace's own
address in a NAT lab), starts real libp2p peers in this process, and returns them started;
the caller stops them (``stop_all``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.partition import partition
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.peer.relay import relay_services
from gossiplearn.transport.discovery import NetworkServices, RelayLimits
from gossiplearn.transport.libp2p import Libp2pTransport

DATA = load_dataset("digits", None, seed=0)


def make_peer(
    index: int,
    of: int,
    transport: Libp2pTransport,
    bootstrap: list[str],
    *,
    min_neighbours: int = 1,
    rounds: int | None = None,
) -> Peer:
    """A small logreg peer on slice ``index`` of ``of`` of the digits data."""
    shards = partition(DATA.train_y, "iid", of, np.random.default_rng(0))
    shard = torch.from_numpy(shards[index])
    model = build_model("logreg", DATA.input_shape, DATA.num_classes, seed=index + 1)
    train = (torch.from_numpy(DATA.train_x)[shard], torch.from_numpy(DATA.train_y)[shard])
    config = PeerConfig(
        merge_timeout=5.0,
        exchange_interval=0.5,
        neighbours=4,
        min_neighbours=min_neighbours,
        start_timeout=60.0,
        rounds=rounds,
        local_steps=2,
        seed=index,
    )
    return Peer(model, train, None, config, transport=transport, bootstrap=bootstrap)


def relay_transport(host: str = "127.0.0.1", limits: RelayLimits | None = None) -> Libp2pTransport:
    """A ``gossiplearn relay`` node's transport (DHT server, relay, AutoNAT, DCUtR)."""
    return Libp2pTransport(listen=f"/ip4/{host}/tcp/0", services=relay_services(limits))


@dataclass
class RelayLab:
    """A relay and two peers that reach each other only through the relay's circuit."""

    relay: Libp2pTransport
    a: Peer
    b: Peer
    started: float = field(default_factory=time.monotonic)

    async def stop_all(self) -> None:
        await asyncio.gather(self.a.stop(), self.b.stop(), return_exceptions=True)
        await self.relay.stop()


async def relayed_pair(
    host: str = "127.0.0.1", *, dcutr: bool = True, relay_host: str | None = None
) -> RelayLab:
    """Start a relay and peers A and B; both reserve a slot on the relay; B's only
    bootstrap address is A's circuit address ``<relay>/p2p-circuit/p2p/<A>``, so nothing
    dials A directly (A "accepts no inbound connections"). With ``dcutr`` the peers may
    upgrade the circuit to a direct connection (where the network lets them)."""
    relay = relay_transport(relay_host or host)
    await relay.start()
    relay_address = relay.addresses[0]

    def services() -> NetworkServices:
        return NetworkServices(relays=(relay_address,), dcutr=dcutr, auto_relay=False)

    a_transport = Libp2pTransport(listen=f"/ip4/{host}/tcp/0", services=services())
    a = make_peer(0, 2, a_transport, [])
    await a.start()
    circuit = await wait_for_reservation(a_transport)
    b_transport = Libp2pTransport(listen=f"/ip4/{host}/tcp/0", services=services())
    b = make_peer(1, 2, b_transport, [circuit])
    await b.start()
    return RelayLab(relay, a, b)


async def wait_for_reservation(transport: Libp2pTransport, timeout: float = 20.0) -> str:
    """The transport's first relayed address, once a relay holds a slot for it."""
    async with asyncio.timeout(timeout):
        while True:
            relayed = [a for a in transport.addresses if "/p2p-circuit/" in a]
            if relayed:
                return relayed[0]
            await asyncio.sleep(0.1)
