"""Discovery without a single point of failure, and reachability through a relay.

Real libp2p peers on 127.0.0.1 (py-libp2p's Kad-DHT, circuit relay v2, AutoNAT, DCUtR),
bounded in time; plus the CLI's refusals of bad discovery flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time

import pytest

from gossiplearn.errors import ConfigError
from gossiplearn.peer import Peer
from gossiplearn.transport.discovery import (
    NetworkServices,
    check_network_name,
    check_relay_address,
    network_key,
)
from gossiplearn.transport.libp2p import Libp2pTransport

pytest.importorskip("torch")
from relay_setup import make_peer, relay_transport, relayed_pair

DCUTR_WAIT = 20.0
BULK_PROTOCOL = "/gossiplearn/test-bulk/1"
BULK_BYTES = 2 * 2**20  # over a relay in one process: ~1-1.6 MiB/s measured
CLOSED = "/ip4/127.0.0.1/tcp/9"  # the discard port: nothing listens there here
RELAY = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLRPJAA5o6Z6f9EbQbTi6XsWKEmExnKZH6bXxHcS26FzW"


# ---- bad input -----------------------------------------------------------------------------


def test_network_names_and_relay_addresses_are_checked() -> None:
    assert check_network_name("digits-lab-2") == "digits-lab-2"
    for bad in ("", "Digits", "a b", "x" * 65, "net/1", "näme"):
        with pytest.raises(ConfigError, match="--network"):
            check_network_name(bad)
    assert check_relay_address(RELAY) == RELAY
    for bad in ("/ip4/127.0.0.1/tcp/4001", "12D3KooW", f"{RELAY}/p2p-circuit", "/p2p/"):
        with pytest.raises(ConfigError, match="--relay"):
            check_relay_address(bad)
    assert network_key("a") != network_key("b") and len(network_key("a")) == 64


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--relay", "/ip4/127.0.0.1/tcp/4001"], "--relay"),
        (["--network", "Bad Name!"], "--network"),
        (["--network", "x" * 65], "--network"),
    ],
)
def test_cli_refuses_bad_discovery_flags_with_exit_2(flags: list[str], named: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gossiplearn", "peer", "--rounds", "1", *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert named in run.stderr


def test_cli_relay_refuses_bad_limits_with_exit_2() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gossiplearn", "relay", "--max-circuits", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--max-circuits" in run.stderr


# ---- the DHT: a late joiner whose only bootstrap peer is dead ------------------------------


@pytest.mark.network
@pytest.mark.slow
async def test_late_joiner_with_a_dead_bootstrap_finds_the_network_through_the_dht() -> None:
    """Peers A and B of network "lab" know a DHT node (a relay node) R. A late joiner C is
    given a dead bootstrap peer (D, stopped) and R; only the DHT tells it of A and B."""
    relay = relay_transport()
    await relay.start()
    dead = Libp2pTransport()
    await dead.start()
    dead_address = dead.addresses[0]
    await dead.stop()

    def services() -> NetworkServices:
        return NetworkServices(network="lab", lookup_interval=1.0, autonat=False)

    peers = []
    try:
        for index in (0, 1):
            transport = Libp2pTransport(services=services())
            peer = make_peer(index, 3, transport, [relay.addresses[0]])
            await peer.start()
            peers.append(peer)
        joiner_transport = Libp2pTransport(services=services())
        joiner = make_peer(2, 3, joiner_transport, [dead_address, relay.addresses[0]])
        started = time.monotonic()
        await joiner.start()
        peers.append(joiner)
        honest = {peers[0].peer_id, peers[1].peer_id}
        async with asyncio.timeout(60):
            while not honest & set(joiner.neighbours):
                await asyncio.sleep(0.2)
        found_after = time.monotonic() - started
        status = joiner.status()
        found = [p.status().discovered.get("dht", 0) for p in peers]
        print(f"late joiner found the network after {found_after:.1f} s; found via DHT: {found}")
        # either side's lookup may come first: the joiner finds A or B, or they find it
        assert sum(found) >= 1
        assert status.network["dht_peers"] >= 1
    finally:
        await asyncio.gather(*(p.stop() for p in peers), return_exceptions=True)
        await relay.stop()


@pytest.mark.network
@pytest.mark.slow
async def test_peers_that_know_only_a_dht_node_find_each_other_through_it() -> None:
    """A and B of network "lab" are connected only to a DHT node R and cannot dial each
    other (as behind NAT: here they announce a closed port): each must find the other's
    provider record on R, although its own record is in its local store (py-libp2p's
    find_providers stops at a local hit, and its provide cannot reach the other)."""
    relay = relay_transport()
    await relay.start()
    services = NetworkServices(network="lab", lookup_interval=1.0, autonat=False, dcutr=False)
    transports = [
        Libp2pTransport(listen="/ip4/127.0.0.1/tcp/0", announce=[CLOSED], services=services)
        for _ in range(2)
    ]
    try:
        for transport in transports:
            await transport.start()
            await transport.connect(relay.addresses[0])
        found: list[set[str]] = [set(), set()]
        async with asyncio.timeout(30):
            while not (transports[1].peer_id in found[0] and transports[0].peer_id in found[1]):
                for mine, transport in zip(found, transports, strict=True):
                    mine.update(peer for peer, _, source in transport.discovered())
                await asyncio.sleep(0.2)
        assert transports[0].peer_id not in found[0]  # never itself
    finally:
        for transport in transports:
            await transport.stop()
        await relay.stop()


@pytest.mark.network
@pytest.mark.slow
async def test_autonat_tells_a_peer_nobody_can_dial_that_it_is_not_reachable() -> None:
    """The AutoNAT server (a relay node) must dial back afresh: answering over the
    connection the question came on told every peer it was reachable."""
    relay = relay_transport()
    await relay.start()
    services = NetworkServices(autonat_interval=1.0, dcutr=False)
    hidden = Libp2pTransport(listen="/ip4/127.0.0.1/tcp/0", announce=[CLOSED], services=services)
    public = Libp2pTransport(listen="/ip4/127.0.0.1/tcp/0", services=services)
    try:
        for transport in (hidden, public):
            await transport.start()
            await transport.connect(relay.addresses[0])

        def verdicts() -> list[str]:
            return [t.network_status()["reachability"] for t in (hidden, public)]

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while "unknown" in verdicts():
                    await asyncio.sleep(0.2)
        assert verdicts() == ["private", "public"]
    finally:
        for transport in (hidden, public):
            await transport.stop()
        await relay.stop()


# ---- the relay: two peers that reach each other only through a circuit ---------------------


@pytest.mark.network
@pytest.mark.slow
async def test_two_peers_exchange_models_through_a_relay_circuit() -> None:
    lab = await relayed_pair(dcutr=False)
    try:
        a, b = lab.a, lab.b
        async with asyncio.timeout(60):
            while a.status().messages_in < 2 or b.status().messages_in < 2:
                await asyncio.sleep(0.2)
        seconds = time.monotonic() - lab.started

        def kinds() -> list[str | None]:  # the network status is refreshed once a second
            return [
                peer.status().network["connections"].get(other.peer_id)
                for peer, other in ((a, b), (b, a))
            ]

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while kinds() != ["relayed", "relayed"]:
                    await asyncio.sleep(0.2)
        assert kinds() == ["relayed", "relayed"]
        assert a.status().relayed_bytes > 0 and b.status().relayed_bytes > 0
        sent = a.status().bytes_out + b.status().bytes_out
        relayed = b.status().relayed_bytes
        print(
            f"models over the circuit: {a.status().messages_in + b.status().messages_in} "
            f"messages, {sent / 1e6:.2f} MB of models, {relayed / 1e6:.2f} MB relayed, "
            f"{seconds:.1f} s"
        )
        arrived: list[int] = []

        async def bulk(sender: str, payload: bytes) -> None:
            arrived.append(len(payload))

        a.transport.set_handler(BULK_PROTOCOL, bulk)
        for size in (BULK_BYTES, BULK_BYTES):
            started = time.monotonic()
            await b.transport.send(a.peer_id, BULK_PROTOCOL, bytes(size))
            seconds = time.monotonic() - started
            print(f"{size / 2**20:.0f} MiB through the relay: {size / 2**20 / seconds:.1f} MiB/s")
        assert arrived == [BULK_BYTES, BULK_BYTES]
        assert b.status().relayed_bytes > relayed + 2 * BULK_BYTES
    finally:
        await lab.stop_all()


@pytest.mark.network
@pytest.mark.slow
async def test_dcutr_outcome_over_a_relay_is_reported() -> None:
    """With DCUtR on, the relayed pair may go direct (on loopback it can): whatever
    happens is reported in the status, and models flow either way."""
    lab = await relayed_pair(dcutr=True)
    try:
        a, b = lab.a, lab.b
        async with asyncio.timeout(60):
            while a.status().messages_in < 2 or b.status().messages_in < 2:
                await asyncio.sleep(0.2)
        deadline = time.monotonic() + DCUTR_WAIT
        while time.monotonic() < deadline and not _went_direct(a, b):
            await asyncio.sleep(0.2)
        outcome = "direct" if _went_direct(a, b) else "still relayed"
        kinds = (a.status().network["connections"], b.status().network["connections"])
        print(
            f"DCUtR outcome after {time.monotonic() - lab.started:.1f} s: {outcome}; "
            f"A->B {kinds[0].get(b.peer_id)}, B->A {kinds[1].get(a.peer_id)}; upgraded: "
            f"{a.status().network['upgraded']}, {b.status().network['upgraded']}"
        )
        assert kinds[1].get(a.peer_id) in ("relayed", "direct", "both")
        # the outcome stays in the status (and the summary) after the peers part
        network = b.status().network  # one snapshot: connection kinds and outcome agree
        direct = network["connections"].get(a.peer_id) in ("direct", "both")
        assert network["dcutr"].get(a.peer_id) == ("direct" if direct else "relayed")
    finally:
        await lab.stop_all()


def _went_direct(a: Peer, b: Peer) -> bool:
    ab = a.status().network["connections"].get(b.peer_id)
    ba = b.status().network["connections"].get(a.peer_id)
    return "direct" in (ab, ba) or "both" in (ab, ba)
