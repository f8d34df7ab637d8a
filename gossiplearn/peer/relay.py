"""``gossiplearn relay``: a public node that relays for peers behind NAT and serves the DHT.

It trains nothing and accepts no models: it runs a Kad-DHT server (so peers of any named
network can use it as their bootstrap and find each other's provider records), a circuit
relay v2 (bounded by :class:`~gossiplearn.transport.discovery.RelayLimits`), an AutoNAT
server (peers learn whether they are reachable) and DCUtR. It prints its peer id and
addresses first, then one status line every ``status_every`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from gossiplearn.transport.discovery import NetworkServices, RelayLimits

DEFAULT_RELAY_LISTEN = "/ip4/0.0.0.0/tcp/4001"


def relay_services(limits: RelayLimits | None = None, mdns: bool = False) -> NetworkServices:
    """The services of a relay node: DHT server, relay, AutoNAT, DCUtR; no network key
    of its own (it does not train, so it must not be found as a neighbour)."""
    return NetworkServices(
        network=None,
        dht=True,
        relay_service=True,
        auto_relay=False,
        mdns=mdns,
        limits=limits or RelayLimits(),
    )


async def run_relay(
    listen: str | list[str],
    identity: Path | None = None,
    *,
    limits: RelayLimits | None = None,
    mdns: bool = False,
    status_every: float = 30.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Run a relay node until SIGINT/SIGTERM (or ``stop``); ConfigError on bad input."""
    from gossiplearn.transport.libp2p import Libp2pTransport

    transport = Libp2pTransport(identity, listen=listen, services=relay_services(limits, mdns))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await transport.start()
    try:
        print(f"relay peer id {transport.peer_id}", flush=True)
        for address in transport.addresses:
            print(f"listening on {address}", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), status_every)
            status = transport.network_status()
            print(
                f"relay: {len(transport.connected_peers())} peers connected, "
                f"{status.get('relaying', 0)} circuits open, {status.get('dht_peers', 0)} "
                f"in the DHT routing table, reachability {status.get('reachability')}",
                flush=True,
            )
    finally:
        await transport.stop()
    return 0
