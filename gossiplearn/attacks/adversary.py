"""Who attacks in a run, with which identities, and how success is measured.

``--attackers`` peers (chosen with a seeded stream) run the attack. With ``--sybils K``
each attacker also controls K−1 extra identities; each one attaches to a cluster of
honest peers (a random honest anchor and its honest neighbours, up to the topology's mean
degree), and every model the attacker sends goes out from all its identities.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch

from gossiplearn.aggregation import get_aggregator
from gossiplearn.attacks import Attack, parse_attack
from gossiplearn.attacks.data import Images, Labels, add_source_samples, poison_data
from gossiplearn.attacks.metrics import success_rate, success_set
from gossiplearn.config import RunConfig
from gossiplearn.learning.datasets import Dataset
from gossiplearn.learning.trainer import Evaluator, Learner
from gossiplearn.protocols.gossip import Merge
from gossiplearn.types import Params, PeerId


@dataclass
class Adversary:
    attack: Attack
    #: Attacking peers (indices among the initial peers).
    attackers: list[int]
    #: attacker -> identity -> that identity's neighbours (the attacker itself included).
    identities: dict[int, dict[PeerId, list[PeerId]]] = field(default_factory=dict)

    @property
    def sybils(self) -> list[PeerId]:
        return [i for a, ids in self.identities.items() for i in ids if i != a]


def plan_adversary(
    config: RunConfig, graph: nx.Graph, rng: np.random.Generator, first_free_id: int
) -> Adversary | None:
    """Pick the attackers and wire their Sybil identities into ``graph`` (in place)."""
    if config.attack is None:
        return None
    count = config.attacker_count()
    attackers = sorted(int(a) for a in rng.choice(config.peers, size=count, replace=False))
    if config.attacker_ids:  # chosen by id (the draw above keeps the stream in step)
        attackers = sorted(config.attacker_ids)
    honest = [p for p in range(config.peers) if p not in set(attackers)]
    honest_set = set(honest)
    degree = max(1, round(2 * graph.number_of_edges() / graph.number_of_nodes()))
    adversary = Adversary(parse_attack(config.attack), attackers)
    next_id = first_free_id
    for attacker in attackers:
        identities: dict[PeerId, list[PeerId]] = {attacker: sorted(graph.neighbors(attacker))}
        for _ in range(config.sybils - 1):
            anchor = honest[int(rng.integers(len(honest)))]
            cluster = [anchor, *sorted(n for n in graph.neighbors(anchor) if n in honest_set)]
            chosen = cluster[:degree]
            graph.add_edges_from((next_id, peer) for peer in chosen)
            identities[next_id] = chosen
            next_id += 1
        adversary.identities[attacker] = identities
    return adversary


def attacker_merge(attack: Attack, beta: float) -> Merge:
    """How an attacker merges what it receives. Model attackers follow the network with
    plain averaging, so that the update they distort starts from the honest models; data
    attackers keep training their own poisoned model and merge nothing."""
    if attack.kind == "model":
        return get_aggregator("mean", beta=beta)
    return keep_own


def keep_own(own: Params, received: Sequence[Params]) -> Params:
    """An attacker's merge that ignores what it receives."""
    return own


def poison_learners(
    adversary: Adversary,
    learners: list[Learner],
    num_classes: int,
    rng: np.random.Generator,
    backdoor_fraction: float,
    pool: tuple[Images, Labels] | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Replace the attackers' training data with the poisoned version (data attacks).

    With a ``pool`` (the training set), a label-flip attacker first adds samples of the
    source class to its shard (:func:`~gossiplearn.attacks.data.add_source_samples`):
    with non-iid shards it may hold none, and then it would flip nothing.

    Returns each attacker's clean data of the same size (what it trains on while a
    scenario's attack window is closed).
    """
    clean: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for attacker in adversary.attackers:
        learner = learners[attacker]
        x, y = learner.x.numpy(), learner.y.numpy()
        if pool is not None:
            x, y = add_source_samples(adversary.attack, x, y, *pool, rng)
        clean[attacker] = (torch.from_numpy(x.copy()), torch.from_numpy(y.copy()))
        x, y = poison_data(
            adversary.attack, x, y, num_classes, rng, backdoor_fraction=backdoor_fraction
        )
        learner.x, learner.y = torch.from_numpy(x), torch.from_numpy(y)
    return clean


def success_meter(attack: Attack, data: Dataset, evaluator: Evaluator) -> Evaluator | None:
    """An evaluator over the inputs on which the attack's success is measured."""
    if not attack.targeted:
        return None
    inputs, target = success_set(attack, data.test_x, data.test_y)
    labels = torch.full((len(inputs),), target, dtype=torch.long)
    return Evaluator(evaluator.model, torch.from_numpy(inputs), labels)


def attacker_weight(core: object, identities: Collection[PeerId]) -> float | None:
    """The share of ``core``'s last merge that came from ``identities`` (0: it merged
    nothing of theirs, or nothing at all); None if the core does not report shares.

    Cores that report it keep ``merge_shares``: sender -> its share of the merged model,
    normalised so that the own model's share and all senders' add up to 1."""
    shares: Mapping[PeerId, float] | None = getattr(core, "merge_shares", None)
    if shares is None:
        return None
    return float(sum(share for peer, share in shares.items() if peer in identities))


def attack_measures(
    adversary: Adversary, meter: Evaluator | None, cores: Mapping[PeerId, object]
) -> Callable[[PeerId, Params], dict[str, float]]:
    """Per reported model: ``attacker_weight`` (the weight its peer gave attacker
    identities, Sybils included, in that round's merge) and, for targeted attacks,
    ``attack_success_rate``. ``cores`` is read when called (peers may be replaced)."""
    identities = {i for ids in adversary.identities.values() for i in ids}

    def measure(peer: PeerId, params: Params) -> dict[str, float]:
        measures: dict[str, float] = {}
        if meter is not None:
            measures["attack_success_rate"] = attack_success(meter, params)
        weight = attacker_weight(cores.get(peer), identities)
        if weight is not None:
            measures["attacker_weight"] = weight
        return measures

    return measure


def attack_success(meter: Evaluator, params: Params) -> float:
    """The share of the meter's inputs predicted as the attacker's target class."""
    predictions = meter.predict(params).numpy()
    return success_rate(predictions, int(meter.y[0])) if len(meter.y) else 0.0
