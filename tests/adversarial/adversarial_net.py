"""A small network of honest real peers (libp2p on 127.0.0.1) for attacks to run against.

The honest peers run in this process, train logreg on digits and find each other through
the first one. An attack is measured against the same network just before it: rounds per
minute and mean accuracy over a quiet window, then over the attack's window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.partition import partition
from gossiplearn.learning.trainer import params_of
from gossiplearn.peer import Peer, PeerConfig
from gossiplearn.transport.libp2p import Libp2pTransport
from gossiplearn.types import Params

DATA = load_dataset("digits")
TEST = (torch.from_numpy(DATA.test_x), torch.from_numpy(DATA.test_y))


def honest_peer(index: int, of: int, bootstrap: list[str], **config: Any) -> Peer:
    shards = partition(DATA.train_y, "iid", of, np.random.default_rng(0))
    shard = torch.from_numpy(shards[index])
    model = build_model("logreg", DATA.input_shape, DATA.num_classes, seed=index + 1)
    train = (torch.from_numpy(DATA.train_x)[shard], torch.from_numpy(DATA.train_y)[shard])
    settings = (
        dict(merge_timeout=3.0, exchange_interval=0.5, min_round_seconds=0.25, seed=index) | config
    )
    return Peer(model, train, TEST, PeerConfig(**settings), bootstrap=bootstrap)


def a_model() -> Params:
    """A model shaped like the honest peers' (values of a fresh initialisation)."""
    return params_of(build_model("logreg", DATA.input_shape, DATA.num_classes, seed=99))


@dataclass
class Window:
    """What the honest peers did over some seconds."""

    rounds_per_minute: float
    accuracy: float  # mean over the honest peers at the window's end

    def __str__(self) -> str:
        return f"{self.rounds_per_minute:.0f} rounds/min, accuracy {self.accuracy:.3f}"


async def measure(peers: list[Peer], seconds: float) -> Window:
    start = [peer.status().round for peer in peers]
    await asyncio.sleep(seconds)
    statuses = [peer.status() for peer in peers]
    rounds = np.mean([s.round - r for s, r in zip(statuses, start, strict=True)])
    accuracy = np.mean([s.accuracy or 0.0 for s in statuses])
    return Window(float(rounds * 60 / seconds), float(accuracy))


@contextlib.asynccontextmanager
async def honest_network(
    count: int = 3, warm_rounds: int = 15, **config: Any
) -> AsyncIterator[list[Peer]]:
    """``count`` honest peers, connected and past ``warm_rounds`` rounds."""
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(honest_peer(0, count, [], **config))
        peers = [first]
        for index in range(1, count):
            peer = honest_peer(index, count, first.transport.addresses[:1], **config)
            peers.append(await stack.enter_async_context(peer))
        while min(p.status().round for p in peers) < warm_rounds or any(
            len(p.neighbours) < count - 1 for p in peers
        ):
            await asyncio.sleep(0.1)
        yield peers


@contextlib.asynccontextmanager
async def attacker(victim: Peer) -> AsyncIterator[Libp2pTransport]:
    """A fresh identity connected to ``victim``."""
    transport = Libp2pTransport()
    await transport.start()
    try:
        await transport.connect(victim.transport.addresses[0])
        yield transport
    finally:
        await transport.stop()
