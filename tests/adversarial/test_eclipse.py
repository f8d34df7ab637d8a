"""A peer-exchange eclipse does not take over honest peers' neighbour slots.

Three honest gossip peers over libp2p on 127.0.0.1 learn for a while undisturbed; then an
attacker with 10 fresh identities connects to all of them, accepts everything, never sends
a model, and keeps sending peer-exchange messages that name its own identities and
thousands of fake peer ids (at closed ports and unroutable addresses). The honest peers
must keep their neighbour slots for each other, most of their round rate and their
accuracy, and their address books must never hold more than the per-source quota from
any one sender.

Run as a script (``python tests/adversarial/test_eclipse.py``) it prints the measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import torch

from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.partition import partition
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.peer.discovery import MAX_PX_PEERS, SOURCE_QUOTA, encode_exchange
from gossiplearn.transport.base import MODEL_PROTOCOL, PEER_EXCHANGE_PROTOCOL, TransportError
from gossiplearn.transport.libp2p import Libp2pTransport

pytestmark = [pytest.mark.network, pytest.mark.slow]

DATA = load_dataset("digits")
TEST = (torch.from_numpy(DATA.test_x), torch.from_numpy(DATA.test_y))
HONEST = 3
IDENTITIES = 10
BASELINE_SECONDS = 25.0
ATTACK_SECONDS = 50.0
EXCHANGE_EVERY = 1.0  # the attacker's peer-exchange period, per identity and victim


def make_peer(index: int, bootstrap: list[str]) -> Peer:
    shards = partition(DATA.train_y, "iid", HONEST, np.random.default_rng(0))
    shard = torch.from_numpy(shards[index])
    model = build_model("logreg", DATA.input_shape, DATA.num_classes, seed=index + 1)
    train = (torch.from_numpy(DATA.train_x)[shard], torch.from_numpy(DATA.train_y)[shard])
    config = PeerConfig(min_round_seconds=1.0, seed=index)  # CLI defaults otherwise
    return Peer(model, train, TEST, config, transport=Libp2pTransport(), bootstrap=bootstrap)


def fake_id() -> str:
    """A well-formed peer id (identity multihash of an Ed25519 key) nobody holds."""
    from libp2p.peer.id import ID

    return str(ID(b"\x00\x24\x08\x01\x12\x20" + os.urandom(32)).to_base58())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_entries(count: int, port: int) -> list[tuple[str, list[str]]]:
    """Half at a closed local port (refused at once), half unroutable (dials time out)."""
    entries = []
    for i in range(count):
        if i % 2:
            host = str(ipaddress.IPv4Address(int.from_bytes(os.urandom(3), "big") | 10 << 24))
        else:
            host = "127.0.0.1"
        entries.append((fake := fake_id(), [f"/ip4/{host}/tcp/{port}/p2p/{fake}"]))
    return entries


class Attacker:
    """Identities that accept every stream, never send a model, and lie in peer exchange."""

    def __init__(self) -> None:
        self.identities = [Libp2pTransport() for _ in range(IDENTITIES)]
        self.fakes_sent = 0

        async def swallow(sender: str, payload: bytes) -> None:
            return None

        for identity in self.identities:
            identity.set_handler(MODEL_PROTOCOL, swallow)
            identity.set_handler(PEER_EXCHANGE_PROTOCOL, swallow)

    @property
    def ids(self) -> set[str]:
        return {identity.peer_id for identity in self.identities}

    async def run(self, victims: list[str]) -> None:
        own = [(t.peer_id, t.addresses) for t in self.identities]
        for identity in self.identities:
            for address in victims:
                with contextlib.suppress(TransportError):
                    await identity.connect(address)
        port = closed_port()
        while True:
            for identity in self.identities:
                fakes = fake_entries(MAX_PX_PEERS - len(own), port)
                payload = encode_exchange([*own, *fakes])
                for victim in victims:
                    victim_id = victim.rsplit("/", 1)[-1]
                    with contextlib.suppress(TransportError):
                        await identity.send(victim_id, PEER_EXCHANGE_PROTOCOL, payload)
                        self.fakes_sent += len(fakes)
            await asyncio.sleep(EXCHANGE_EVERY)


class Watch:
    """Samples the honest peers' state twice a second."""

    def __init__(self, peers: list[Peer], attackers: set[str]) -> None:
        self.peers, self.attackers = peers, attackers
        self.rounds: list[list[float]] = [[] for _ in peers]
        self.max_attacker_slots = 0
        self.max_attacker_candidates = 0
        self.max_from_one_source = 0
        self.max_book = 0
        for i, peer in enumerate(peers):
            peer.on("round", self._counter(i))

    def _counter(self, index: int) -> Callable[[dict[str, Any]], None]:
        loop = asyncio.get_running_loop()
        return lambda info: self.rounds[index].append(loop.time())

    def reset(self) -> None:
        self.max_attacker_slots = self.max_attacker_candidates = 0
        self.max_from_one_source = self.max_book = 0

    async def run(self) -> None:
        while True:
            for peer in self.peers:
                status = peer.status()
                slots = len(self.attackers & set(status.neighbours))
                candidates = len(self.attackers & set(getattr(status, "candidates", [])))
                self.max_attacker_slots = max(self.max_attacker_slots, slots)
                self.max_attacker_candidates = max(self.max_attacker_candidates, candidates)
                self.max_book = max(self.max_book, status.known_peers)
                book = peer.book
                if book is not None and hasattr(book, "count_from"):
                    most = max(book.count_from(a) for a in self.attackers)
                    self.max_from_one_source = max(self.max_from_one_source, most)
            await asyncio.sleep(0.5)

    def rounds_per_minute(self, start: float, end: float) -> float:
        """The slowest honest peer's rounds per minute in [start, end)."""
        counts = [len([t for t in times if start <= t < end]) for times in self.rounds]
        return min(counts) * 60.0 / (end - start)


def phase(watch: Watch, peers: list[Peer], start: float, end: float) -> dict[str, Any]:
    accuracies = [p.accuracy or 0.0 for p in peers]
    dials: dict[str, int] = {}
    for peer in peers:
        for outcome, count in getattr(peer, "dials", {}).items():
            dials[outcome] = dials.get(outcome, 0) + count
    return {
        "rounds_per_minute": round(watch.rounds_per_minute(start, end), 1),
        "mean_accuracy": round(float(np.mean(accuracies)), 4),
        "max_attacker_neighbour_slots": watch.max_attacker_slots,
        "max_attacker_candidates": watch.max_attacker_candidates,
        "max_book_entries_from_one_attacker": watch.max_from_one_source,
        "max_book_size": watch.max_book,
        "neighbours": [len(p.neighbours) for p in peers],
        "dials": dials,
    }


@contextlib.asynccontextmanager
async def running(*things: Any) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for thing in things:
            if isinstance(thing, Peer):
                await stack.enter_async_context(thing)
            else:
                await thing.start()
                stack.push_async_callback(thing.stop)
        yield


async def eclipse_scenario() -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    first = make_peer(0, [])
    async with running(first):
        address = first.transport.addresses[0]
        peers = [first, make_peer(1, [address]), make_peer(2, [address])]
        attacker = Attacker()
        async with running(*peers[1:], *attacker.identities):
            while (
                min(len(p.neighbours) for p in peers) < HONEST - 1
                or min(p.status().round for p in peers) < 3
            ):
                await asyncio.sleep(0.2)
            watch = Watch(peers, attacker.ids)
            watching = asyncio.create_task(watch.run())
            start = loop.time()
            await asyncio.sleep(BASELINE_SECONDS)
            baseline = phase(watch, peers, start, loop.time())
            watch.reset()
            victims = [p.transport.addresses[0] for p in peers]
            attacking = asyncio.create_task(attacker.run(victims))
            start = loop.time()
            await asyncio.sleep(ATTACK_SECONDS)
            attacked = phase(watch, peers, start, loop.time())
            attacked["fake_ids_sent"] = attacker.fakes_sent
            honest_ids = {p.peer_id for p in peers}
            attacked["honest_neighbours"] = [len(honest_ids & set(p.neighbours)) for p in peers]
            for task in (attacking, watching):
                task.cancel()
            await asyncio.gather(attacking, watching, return_exceptions=True)
    return {"baseline": baseline, "attack": attacked}


async def test_an_eclipse_attack_leaves_honest_peers_their_slots_and_pace() -> None:
    async with asyncio.timeout(150):
        result = await eclipse_scenario()
    print(json.dumps(result))
    baseline, attack = result["baseline"], result["attack"]
    assert attack["fake_ids_sent"] > 1000
    assert attack["max_attacker_neighbour_slots"] <= 2, result  # of 8: most stay honest
    assert attack["honest_neighbours"] == [HONEST - 1] * HONEST, result
    assert attack["rounds_per_minute"] >= baseline["rounds_per_minute"] / 2, result
    assert attack["mean_accuracy"] >= baseline["mean_accuracy"] - 0.03, result
    assert attack["max_book_entries_from_one_attacker"] <= SOURCE_QUOTA, result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(eclipse_scenario()), indent=2))
