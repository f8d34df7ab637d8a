"""Replays: a model a sender already gave, or an older round of it, is ignored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from gossiplearn.protocols.dpsgd import DPSGDConfig, DPSGDCore
from gossiplearn.protocols.events import MessageReceived, RoundDone, Start, TrainingDone
from gossiplearn.protocols.gossip import GossipConfig, GossipCore
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.modest import ModestConfig, ModestCore
from gossiplearn.protocols.modest_messages import Activity, ModelKind, ModestModel
from gossiplearn.protocols.rounds import MAX_TRACKED_SENDERS
from gossiplearn.protocols.sybilwall import SybilWallConfig, SybilWallCore
from gossiplearn.protocols.sybilwall_messages import HistoryRecord
from gossiplearn.types import Params


def p(value: float) -> Params:
    return {"w": np.array([value], np.float32)}


class Recording:
    def __init__(self) -> None:
        self.received: list[list[float]] = []

    def __call__(self, own: Params, models: Sequence[Params]) -> Params:
        self.received.append([float(m["w"][0]) for m in models])
        return own


def gossip(neighbours: list[int], buffer_size: int = 3) -> tuple[GossipCore, Recording]:
    merge = Recording()
    config = GossipConfig(rounds=10, local_steps=1, buffer_size=buffer_size, wait_for_buffer=False)
    return GossipCore(config, neighbours, p(0), merge, np.random.default_rng(0)), merge


def test_gossip_ignores_duplicates_and_older_rounds_from_a_sender() -> None:
    core, merge = gossip([1, 2])
    core.handle(0.0, Start())
    for sender, round_, value in [
        (1, 3, 1.0),
        (1, 3, 2.0),  # the same round again: a duplicate
        (1, 2, 3.0),  # an older round
        (2, 1, 4.0),  # another sender keeps its own count
        (1, 4, 5.0),  # newer: taken
        (2, 1, 6.0),
    ]:
        core.handle(0.0, MessageReceived(sender, ModelMessage(round_, p(value))))
    effects = core.handle(1.0, TrainingDone(p(0)))
    assert any(isinstance(e, RoundDone) for e in effects)
    assert merge.received == [[4.0, 5.0]]  # one model per sender, its newest
    assert core.rejected["Replay"] == 3


def test_gossip_remembers_a_bounded_number_of_senders() -> None:
    core, _ = gossip(list(range(MAX_TRACKED_SENDERS + 10)))
    core.handle(0.0, Start())
    for sender in range(MAX_TRACKED_SENDERS + 10):
        core.handle(0.0, MessageReceived(sender, ModelMessage(1, p(0))))
    assert len(core.last_round_from) == MAX_TRACKED_SENDERS
    assert 0 not in core.last_round_from  # the least recent went first


def loop_core(protocol: str) -> Any:
    """A gossip-family core with neighbours 1 and 2, started."""
    rng = np.random.default_rng(0)
    if protocol == "gossip":
        core: Any = gossip([1, 2])[0]
    elif protocol == "dpsgd":
        core = DPSGDCore(DPSGDConfig(rounds=10, local_steps=1), {1: 0.25, 2: 0.25}, p(0))
    else:
        core = SybilWallCore(0, SybilWallConfig(rounds=10, local_steps=1), [1, 2], p(0), rng)
    core.handle(0.0, Start())
    return core


@pytest.mark.parametrize("protocol", ["gossip", "dpsgd", "sybilwall"])
def test_every_round_loop_core_rejects_replays_and_strangers(protocol: str) -> None:
    core = loop_core(protocol)
    for sender, round_ in [(1, 2), (1, 2), (1, 1), (2, 1), (99, 5), (1, 3)]:
        core.handle(0.0, MessageReceived(sender, ModelMessage(round_, p(float(round_)))))
    assert core.rejected == {"Replay": 2, "NotNeighbour": 1}
    assert dict(core.last_round_from) == {2: 1, 1: 3}


def test_sybilwall_relayed_records_are_not_replays_of_their_sender() -> None:
    core = loop_core("sybilwall")
    core.handle(0.0, MessageReceived(1, ModelMessage(4, p(1.0))))
    for origin, round_ in [(5, 3), (6, 1)]:  # other peers' rounds, older than 1's own
        core.handle(0.0, MessageReceived(1, HistoryRecord(round_, origin, 1, p(2.0))))
    assert not core.rejected and {5, 6} <= set(core.records)


def test_modest_counts_a_replayed_trained_model_once() -> None:
    view = {peer: Activity(0) for peer in range(3)}
    config = ModestConfig(rounds=10, local_steps=1, sample_size=3, success_fraction=1.0)
    core = ModestCore(0, config, p(0), view, np.random.default_rng(0))
    model = ModestModel(ModelKind.TRAINED, 2, p(1.0), 1, {})
    for _ in range(3):  # the same sender's model, three times
        effects = core.handle(0.0, MessageReceived(1, model))
        assert not any(isinstance(e, RoundDone) for e in effects)
    assert list(core.buffer) == [1]
    # an older sample is ignored once a newer one is collected
    core.handle(0.0, MessageReceived(2, ModestModel(ModelKind.TRAINED, 3, p(2.0), 1, {})))
    core.handle(0.0, MessageReceived(1, model))
    assert core.agg_round == 3 and list(core.buffer) == [2]
