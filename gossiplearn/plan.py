"""The plan of a run: every random choice a run makes, derived from its seed.

The simulator and a real peer of the same scenario both read it, so that peer ``i`` of a
launched network holds the data shard, initial model and attacker role that peer ``i`` of
``simulate`` holds for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossiplearn.attacks.adversary import Adversary, plan_adversary
from gossiplearn.config import RunConfig
from gossiplearn.learning.datasets import Dataset
from gossiplearn.learning.partition import partition
from gossiplearn.topologies import build_topology


@dataclass(frozen=True)
class Streams:
    """Independent random streams, all derived from the run's seed."""

    topology_seed: int
    partition: np.random.Generator
    network: np.random.Generator
    cores: list[np.random.Generator]
    batch_seeds: list[int]
    init_seeds: list[int]
    eval_subset: np.random.Generator
    churn: np.random.Generator
    adversary: np.random.Generator
    loss: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int, peers: int) -> Streams:
        # Children keep their values when more are spawned: add new streams at the end.
        streams = np.random.SeedSequence(seed).spawn(10)
        topo, part, net, cores, batches, inits, evals, churn, adversary, loss = streams
        return cls(
            topology_seed=int(topo.generate_state(1)[0]),
            partition=np.random.default_rng(part),
            network=np.random.default_rng(net),
            cores=[np.random.default_rng(s) for s in cores.spawn(peers)],
            batch_seeds=[int(s) for s in batches.generate_state(peers)],
            init_seeds=[int(s) for s in inits.generate_state(peers)],
            eval_subset=np.random.default_rng(evals),
            churn=np.random.default_rng(churn),
            adversary=np.random.default_rng(adversary),
            loss=np.random.default_rng(loss),
        )


def planned_attackers(config: RunConfig) -> list[int]:
    """The attackers :func:`simulate` picks for ``config``: a real peer of the scenario
    derives whether it attacks the same way (with ``sybils``, it holds that many keys)."""
    _, adversary = planned_adversary(config)
    return adversary.attackers if adversary else []


def planned_adversary(config: RunConfig) -> tuple[nx.Graph, Adversary | None]:
    """The topology and adversary :func:`simulate` builds for ``config``: the graph holds
    the Sybil identities too (ids from the number of peers, joining ones included), each
    linked to the honest peers it attaches to."""
    total = config.peers + config.joining_peers()
    streams = Streams.from_seed(config.seed, total)
    graph = build_topology(config.topology, config.peers, streams.topology_seed)
    return graph, plan_adversary(config, graph, streams.adversary, first_free_id=total)


def planned_shard(config: RunConfig, data: Dataset, index: int) -> tuple[np.ndarray, int]:
    """Peer ``index``'s data shard (training-set rows) and initial-model seed, as in
    :func:`simulate` (joining peers included)."""
    total = config.peers + config.joining_peers()
    streams = Streams.from_seed(config.seed, total)
    shards = partition(data.train_y, config.partition, total, streams.partition, data.train_groups)
    seed = streams.init_seeds[0 if config.shared_init else index]
    return shards[index], seed
