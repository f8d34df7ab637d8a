"""D-PSGD core (Lian et al., 2017): synchronous neighbour averaging.

How it works: in round r the peer trains, sends its model tagged r to every neighbour, and
waits until it holds the round-r model of every neighbour (or ``merge_timeout`` passes);
then x ← w_self·x + Σ_j w_j·x_j with Metropolis–Hastings weights
w_j = 1 / (1 + max(deg_self, deg_j)), w_self = 1 − Σ_j w_j, renormalised over the models
that actually arrived.

Invariants: models are keyed by (round, sender); only models of the current round are
merged, those of later rounds kept for their round, and those of rounds already merged
dropped; a neighbour that goes down is no longer waited for, and its weight goes to the
own model; a peer that comes up is not taken as a neighbour (its weight is unknown). The
rounds themselves (timer, replay check, reporting) are the loop of
:mod:`~gossiplearn.protocols.rounds`; :class:`DPSGDPolicy` is D-PSGD's part.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossiplearn.aggregation._tensors import is_local_statistic
from gossiplearn.protocols.events import Send
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.rounds import LoopState, RoundLoop, push_model
from gossiplearn.types import Params, PeerId


@dataclass(frozen=True)
class DPSGDConfig:
    rounds: int
    local_steps: int
    merge_timeout: float = 30.0
    samples: int = 0


def metropolis_hastings_weights(graph: nx.Graph, node: PeerId) -> dict[PeerId, float]:
    """Weights node ``node`` gives each neighbour: 1 / (1 + max(degree_i, degree_j))."""
    degree = graph.degree(node)
    return {j: 1.0 / (1.0 + max(degree, graph.degree(j))) for j in sorted(graph.neighbors(node))}


def weighted_merge(
    own: Params, others: Mapping[PeerId, Params], weights: Mapping[PeerId, float]
) -> Params:
    """w_self·own + Σ w_j·others[j], where w_self = 1 − Σ w_j; local statistics kept."""
    self_weight = 1.0 - sum(weights[j] for j in others)
    merged: Params = {}
    for name, value in own.items():
        if is_local_statistic(name, value):
            merged[name] = value
            continue
        total = self_weight * np.asarray(value, dtype=np.float64)
        for peer, model in others.items():
            total += weights[peer] * np.asarray(model[name], dtype=np.float64)
        merged[name] = total.astype(value.dtype)
    return merged


Loop = RoundLoop[ModelMessage]


class DPSGDPolicy:
    """D-PSGD's part of the round loop: wait for every neighbour's model of this round,
    merge with Metropolis–Hastings weights."""

    waits = True
    accepts_any_message = False

    def __init__(self, config: DPSGDConfig, weights: Mapping[PeerId, float]) -> None:
        self.config = config
        self.weights = dict(weights)
        #: round -> sender -> its model of that round (this round's, and later ones).
        self.inbox: defaultdict[int, dict[PeerId, Params]] = defaultdict(dict)

    def model_round(self, message: ModelMessage) -> int:
        return message.round

    def take(self, loop: Loop, sender: PeerId, message: ModelMessage) -> bool:
        current = message.round == loop.round and loop.waiting
        if message.round > loop.round or current:
            self.inbox[message.round][sender] = message.params
            return True
        return False  # a round already merged

    def ready(self, loop: Loop) -> bool:
        arrived = self.inbox.get(loop.round, {})
        return all(peer in arrived for peer in loop.neighbours)

    def trained(self, loop: Loop, params: Params) -> Params:
        return params

    def pushes(self, loop: Loop) -> list[Send[ModelMessage]]:
        return push_model(loop, loop.neighbours, self.config.samples)

    def merge(self, loop: Loop, waited: bool) -> tuple[Params, int]:
        """Merge this round's models that arrived; a missing one's weight goes to self."""
        inbox = self.inbox.get(loop.round, {})
        arrived = {peer: model for peer, model in inbox.items() if peer in self.weights}
        for old in [r for r in self.inbox if r <= loop.round]:
            del self.inbox[old]
        return weighted_merge(loop.params, arrived, self.weights), len(arrived)

    def peer_up(self, loop: Loop, peer: PeerId) -> bool:
        return False  # no weight for it: D-PSGD's graph is fixed at start

    def peer_down(self, loop: Loop, peer: PeerId) -> None:
        # Its weight moves to the self weight, as in MH on the smaller graph.
        del self.weights[peer]


class DPSGDCore(LoopState[ModelMessage]):
    """Sans-I/O D-PSGD for one peer."""

    def __init__(
        self, config: DPSGDConfig, weights: Mapping[PeerId, float], params: Params
    ) -> None:
        self.config = config
        self.policy = DPSGDPolicy(config, weights)
        self.loop = RoundLoop(config, list(weights), params, self.policy)

    @property
    def weights(self) -> dict[PeerId, float]:
        """The weight of each neighbour (the neighbours themselves)."""
        return self.policy.weights

    @property
    def inbox(self) -> defaultdict[int, dict[PeerId, Params]]:
        return self.policy.inbox
