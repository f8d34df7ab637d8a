"""D-PSGD core (Lian et al., 2017): synchronous neighbour averaging.

How it works: in round r the peer trains, sends its model tagged r to every neighbour, and
waits until it holds the round-r model of every neighbour (or ``merge_timeout`` passes);
then x ← w_self·x + Σ_j w_j·x_j, w_self = 1 − Σ_j w_j, where a model that did not arrive
gives its weight to the own one. Two ways to weigh:

- fixed neighbours (the simulator, which knows the graph): Metropolis–Hastings weights
  w_j = 1 / (1 + max(deg_self, deg_j)); a peer that comes up is not taken as a neighbour
  (its weight is unknown);
- dynamic neighbours (:meth:`DPSGDCore.dynamic`, real peers, which find neighbours at run
  time and do not know their degrees): max-degree weights w_j = 1 / (1 + cap), where
  ``cap`` is the neighbour cap all peers share, so the mixing matrix is symmetric and
  doubly stochastic without knowing any degree; a peer that comes up is a neighbour while
  fewer than ``cap`` are held. Rounds drift between real peers, so a neighbour that has
  sent a model of a later round is not waited for (its model of this round will not
  come), and models more than ``MAX_ROUNDS_AHEAD`` rounds ahead are not stored.

One-peer exponential graph (``graph="one-peer-exp"``, Ying et al. 2021; the baseline of
the MoDeST paper): peers are numbered 0..n-1 and in round r (from 1) peer i sends its
model to ONE peer, i + 2^k (mod n), and waits for the one of i − 2^k (mod n), where
k = (r − 1) mod τ and τ = ⌈log2 n⌉ cycles through the hops 1, 2, 4, ... < n; it merges
x ← (x + x_{i−2^k}) / 2. Each round's mixing matrix is doubly stochastic, and every
peer sends one model a round instead of one per neighbour. See :func:`one_peer_exponential`.

Invariants: models are keyed by (round, sender); only models of the current round are
merged, those of later rounds kept for their round, and those of rounds already merged
dropped; a neighbour that goes down is no longer waited for, and its weight goes to the
own model. The rounds themselves (timer, replay check, reporting) are the loop of
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

#: Dynamic neighbours: models of rounds further ahead than this are not stored (a sender
#: cannot fill memory with future rounds); the sender counts as past the current round.
MAX_ROUNDS_AHEAD = 4


#: What D-PSGD mixes over each round: every neighbour of the topology, or one peer of the
#: exponential graph (see :func:`one_peer_exponential`).
DPSGD_GRAPHS = ("neighbours", "one-peer-exp")


@dataclass(frozen=True)
class DPSGDConfig:
    rounds: int
    local_steps: int
    merge_timeout: float = 30.0
    samples: int = 0


def exponential_hops(peers: int) -> list[int]:
    """The hops 1, 2, 4, ... below ``peers`` that the one-peer exponential graph cycles."""
    hops = []
    hop = 1
    while hop < peers:
        hops.append(hop)
        hop *= 2
    return hops


def one_peer_exponential(peer: int, peers: int, round_: int) -> tuple[int, int]:
    """``(send_to, receive_from)`` of ``peer`` (0..peers-1) in round ``round_`` (from 1)
    of the one-peer exponential graph: hop 2^k with k = (round − 1) mod ⌈log2 peers⌉."""
    if not 0 <= peer < peers or peers < 2:
        raise ValueError(f"one-peer-exp: peer {peer} is not one of 0..{peers - 1}")
    if round_ < 1:
        raise ValueError(f"one-peer-exp: rounds count from 1, got {round_}")
    hops = exponential_hops(peers)
    hop = hops[(round_ - 1) % len(hops)]
    return (peer + hop) % peers, (peer - hop) % peers


def metropolis_hastings_weights(graph: nx.Graph, node: PeerId) -> dict[PeerId, float]:
    """Weights node ``node`` gives each neighbour: 1 / (1 + max(degree_i, degree_j))."""
    degree = graph.degree(node)
    return {j: 1.0 / (1.0 + max(degree, graph.degree(j))) for j in sorted(graph.neighbors(node))}


def max_degree_weight(cap: int) -> float:
    """The weight of each neighbour when every peer holds at most ``cap`` of them."""
    return 1.0 / (1.0 + cap)


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
    merge with Metropolis–Hastings weights (fixed neighbours) or max-degree weights
    (``cap`` set: dynamic neighbours, see :meth:`dynamic`)."""

    waits = True
    accepts_any_message = False

    def __init__(
        self,
        config: DPSGDConfig,
        weights: Mapping[PeerId, float],
        *,
        cap: int | None = None,
        one_peer: tuple[int, int] | None = None,
    ) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"cap must be at least 1 neighbour, got {cap}")
        if one_peer is not None:
            if cap is not None:
                raise ValueError("one-peer-exp needs fixed peer ids 0..n-1, not a neighbour cap")
            one_peer_exponential(one_peer[0], one_peer[1], 1)  # checks the peer id
        self.config = config
        self.weights = dict(weights)
        #: Dynamic neighbours: at most this many, each weighted 1 / (1 + cap).
        self.cap = cap
        #: One-peer exponential graph: (this peer's id, number of peers); None: every
        #: neighbour each round.
        self.one_peer = one_peer
        #: round -> sender -> its model of that round (this round's, and later ones).
        self.inbox: defaultdict[int, dict[PeerId, Params]] = defaultdict(dict)

    @classmethod
    def dynamic(cls, config: DPSGDConfig, cap: int) -> DPSGDPolicy:
        """No neighbours yet; each peer taken up weighs 1 / (1 + cap), ``cap`` at most."""
        return cls(config, {}, cap=cap)

    def model_round(self, message: ModelMessage) -> int:
        return message.round

    def take(self, loop: Loop, sender: PeerId, message: ModelMessage) -> bool:
        current = message.round == loop.round and loop.waiting
        if self.cap is not None and message.round > loop.round + MAX_ROUNDS_AHEAD:
            return True  # not stored, but its sender is past this round: not waited for
        if message.round > loop.round or current:
            self.inbox[message.round][sender] = message.params
            return True
        return False  # a round already merged

    def partners(self, round_: int) -> tuple[PeerId, PeerId] | None:
        """One-peer exponential graph: (send to, receive from) in ``round_``; else None."""
        if self.one_peer is None:
            return None
        return one_peer_exponential(self.one_peer[0], self.one_peer[1], round_)

    def ready(self, loop: Loop) -> bool:
        arrived = self.inbox.get(loop.round, {})
        partners = self.partners(loop.round)
        if partners is not None:  # only the one in-neighbour of this round, if it is up
            source = partners[1]
            return source in arrived or source not in loop.neighbours
        return all(peer in arrived or self._moved_on(loop, peer) for peer in loop.neighbours)

    def _moved_on(self, loop: Loop, peer: PeerId) -> bool:
        """Dynamic neighbours: ``peer`` sent a later round, so its model of this one will
        not come (rounds drift on real peers; the replay check would refuse it anyway)."""
        return self.cap is not None and loop.last_round_from.get(peer, -1) > loop.round

    def trained(self, loop: Loop, params: Params) -> Params:
        return params

    def pushes(self, loop: Loop) -> list[Send[ModelMessage]]:
        partners = self.partners(loop.round)
        if partners is not None:
            targets = [partners[0]] if partners[0] in loop.neighbours else []
            return push_model(loop, targets, self.config.samples)
        return push_model(loop, loop.neighbours, self.config.samples)

    def merge(self, loop: Loop, waited: bool) -> tuple[Params, int]:
        """Merge this round's models that arrived; a missing one's weight goes to self."""
        inbox = self.inbox.get(loop.round, {})
        partners = self.partners(loop.round)
        weights = self.weights if partners is None else {partners[1]: 0.5}
        arrived = {peer: model for peer, model in inbox.items() if peer in weights}
        for old in [r for r in self.inbox if r <= loop.round]:
            del self.inbox[old]
        return weighted_merge(loop.params, arrived, weights), len(arrived)

    def peer_up(self, loop: Loop, peer: PeerId) -> bool:
        if self.cap is None or len(self.weights) >= self.cap:
            return False  # fixed graph: no weight for it; or the cap is reached
        self.weights[peer] = max_degree_weight(self.cap)
        return True

    def peer_down(self, loop: Loop, peer: PeerId) -> None:
        # Its weight moves to the self weight, as in MH on the smaller graph.
        del self.weights[peer]


class DPSGDCore(LoopState[ModelMessage]):
    """Sans-I/O D-PSGD for one peer: fixed neighbours with the given ``weights``, or
    dynamic ones (:meth:`dynamic`)."""

    def __init__(
        self,
        config: DPSGDConfig,
        weights: Mapping[PeerId, float],
        params: Params,
        *,
        round: int = 0,
        cap: int | None = None,
        one_peer: tuple[int, int] | None = None,
    ) -> None:
        self.config = config
        self.policy = DPSGDPolicy(config, weights, cap=cap, one_peer=one_peer)
        self.loop = RoundLoop(config, list(weights), params, self.policy, round=round)

    @classmethod
    def dynamic(cls, config: DPSGDConfig, cap: int, params: Params, *, round: int = 0) -> DPSGDCore:
        """D-PSGD on a real peer: neighbours come (PeerUp, while fewer than ``cap``) and
        go (PeerDown), each weighted 1 / (1 + cap); ``round`` > 0 when resuming."""
        return cls(config, {}, params, round=round, cap=cap)

    @property
    def weights(self) -> dict[PeerId, float]:
        """The weight of each neighbour (the neighbours themselves)."""
        return self.policy.weights

    @property
    def inbox(self) -> defaultdict[int, dict[PeerId, Params]]:
        return self.policy.inbox
