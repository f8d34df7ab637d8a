"""Assemble a simulated run from a :class:`~gossiplearn.config.RunConfig` and execute it.

Every random choice comes from one ``numpy.random.SeedSequence(config.seed)``, split into
independent streams for the topology, the partition, the network, the peers' protocol
cores, their training batches and their initial weights, and churn. Peers that join during
the run get their data shard and streams at the start, after the initial peers'.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from gossiplearn.aggregation import SHARES, get_aggregator, get_shares
from gossiplearn.attacks import Attack
from gossiplearn.attacks.core import AttackerCore, IdleCore
from gossiplearn.config import RunConfig
from gossiplearn.errors import ConfigError
from gossiplearn.learning.batched import BatchedPool, StackedEvaluator
from gossiplearn.learning.datasets import Dataset, load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.partition import partition
from gossiplearn.learning.pool import SequentialPool, deferring
from gossiplearn.learning.pretrain import Transfer, extractor_for_run, transfer_setup
from gossiplearn.learning.trainer import Evaluator, Learner
from gossiplearn.protocols.bristle import BristleConfig, BristleCore, ValidationSet, pick_validation
from gossiplearn.protocols.dpsgd import DPSGDConfig, DPSGDCore, metropolis_hastings_weights
from gossiplearn.protocols.events import AnyCore, Core
from gossiplearn.protocols.fedavg import SERVER, FedAvgClient, FedAvgConfig, FedAvgServer
from gossiplearn.protocols.gossip import GossipCore, Merge
from gossiplearn.protocols.messages import spec_of
from gossiplearn.protocols.modest import ModestConfig, ModestCore
from gossiplearn.protocols.modest_messages import Activity
from gossiplearn.protocols.sybilwall import SybilWallCore
from gossiplearn.results import plot_accuracy, run_title, write_metrics, write_summary
from gossiplearn.scenarios.adversary import (
    Adversary,
    attack_measures,
    plan_adversary,
    poison_learners,
    success_meter,
)
from gossiplearn.scenarios.keys import attacker_core, run_keys
from gossiplearn.scenarios.network import NetworkModel, NetworkSettings
from gossiplearn.scenarios.recorder import MetricsLine, RoundRecorder
from gossiplearn.scenarios.simulator import Simulator
from gossiplearn.scenarios.timeline import Rebuilder, TimelinePlayer
from gossiplearn.timeline import resolve
from gossiplearn.topologies import build_topology
from gossiplearn.types import Params, PeerId


@dataclass
class RunResult:
    config: RunConfig
    summary: dict[str, Any]
    metrics: list[MetricsLine] = field(default_factory=list)
    #: Training jobs each peer started.
    training_jobs: dict[PeerId, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Streams:
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
    def from_seed(cls, seed: int, peers: int) -> _Streams:
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


def _learners(
    config: RunConfig, data: Dataset, streams: _Streams, transfer: Transfer | None = None
) -> list[Learner]:
    peers = config.peers + config.joining_peers()
    shards = partition(data.train_y, config.partition, peers, streams.partition)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    learners = []
    for i, shard in enumerate(shards):
        seed = streams.init_seeds[0] if config.shared_init else streams.init_seeds[i]
        if transfer is not None:  # a frozen extractor under a zero head: no init to seed
            model: torch.nn.Module = transfer.model()
        else:
            model = build_model(config.model, data.input_shape, data.num_classes, seed=seed)
        index = torch.from_numpy(shard)
        learners.append(
            Learner(
                model,
                x[index],
                y[index],
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                batch_size=config.batch_size,
                seed=streams.batch_seeds[i],
            )
        )
    return learners


def _local_steps(config: RunConfig, learner: Learner) -> int:
    return config.steps_per_round(learner.steps_per_epoch())


def _cores(
    config: RunConfig, graph: nx.Graph, learners: list[Learner], streams: _Streams
) -> dict[PeerId, Core | AnyCore]:
    """The cores of the initial peers (ids 0..peers-1; FedAvg adds its server)."""
    cores: dict[PeerId, Core | AnyCore] = {}
    initial = learners[: config.peers]
    if config.protocol == "modest":
        view: dict[PeerId, Activity] = dict.fromkeys(range(config.peers), Activity(0))
        for i, learner in enumerate(initial):
            modest = _modest_config(config, learner)
            keys = run_keys(config.seed)  # signed membership changes
            cores[i] = ModestCore(
                i, modest, learner.params(), view, streams.cores[i],
                signer=keys.signer(i), verifier=keys.verifier,
            )  # fmt: skip
        return cores
    if config.protocol == "fedavg":
        for i, learner in enumerate(initial):
            cores[i] = FedAvgClient(_local_steps(config, learner), learner.samples)
        clients_per_round = max(1, round(config.sample_fraction * config.peers))
        fed = FedAvgConfig(config.rounds, clients_per_round, round_timeout=config.merge_timeout)
        cores[SERVER] = FedAvgServer(
            fed, list(range(config.peers)), learners[0].params(), streams.cores[0]
        )
        return cores
    if config.aggregator == "sybilwall":  # gossip with its own core (validated in config)
        for i, learner in enumerate(initial):
            neighbours = sorted(graph.neighbors(i))
            cores[i] = _sybilwall_core(config, i, learner, neighbours, streams.cores[i])
        return cores
    if config.aggregator == "bristle":  # gossip with its own core (validated in config)
        for i, learner in enumerate(initial):
            neighbours = sorted(graph.neighbors(i))
            cores[i] = _bristle_core(config, learner, neighbours, streams.cores[i])
        return cores
    merge = _merge_rule(config)
    for i, learner in enumerate(initial):
        steps = _local_steps(config, learner)
        if config.protocol == "dpsgd":
            dpsgd = DPSGDConfig(config.rounds, steps, config.merge_timeout, learner.samples)
            cores[i] = DPSGDCore(dpsgd, metropolis_hastings_weights(graph, i), learner.params())
        else:
            neighbours = sorted(graph.neighbors(i))
            cores[i] = _gossip_core(config, learner, neighbours, merge, streams.cores[i])
    return cores


def _merge_rule(config: RunConfig) -> Merge:
    """The configured aggregation rule; with the batched engine it waits, when the own
    model is still being trained, until its result is read (same model, more batching)."""
    rule = get_aggregator(config.aggregator, **config.aggregator_options())
    return deferring(rule) if config.engine == "batched" else rule


def _gossip_core(
    config: RunConfig,
    learner: Learner,
    neighbours: list[PeerId],
    merge: Merge,
    rng: np.random.Generator,
    round_: int = 0,
    params: Params | None = None,
) -> GossipCore:
    gossip = config.gossip_config(config.rounds, _local_steps(config, learner), learner.samples)
    start = learner.params() if params is None else params
    # Attack runs measure the weight honest peers give attackers (attacker_weight).
    weigh = None
    if config.attack is not None and config.aggregator in SHARES:
        weigh = get_shares(config.aggregator, **config.aggregator_options())
    return GossipCore(gossip, neighbours, start, merge, rng, round=round_, weigh=weigh)


def _sybilwall_core(
    config: RunConfig,
    peer: PeerId,
    learner: Learner,
    neighbours: list[PeerId],
    rng: np.random.Generator,
    round_: int = 0,
    params: Params | None = None,
) -> SybilWallCore:
    steps = _local_steps(config, learner)
    sybilwall = config.sybilwall_config(config.rounds, steps, learner.samples)
    start = learner.params() if params is None else params
    keys = run_keys(config.seed)  # signed histories
    return SybilWallCore(
        peer, sybilwall, neighbours, start, rng, round=round_,
        signer=keys.signer(peer), verifier=keys.verifier,
    )  # fmt: skip


def _bristle_core(
    config: RunConfig,
    learner: Learner,
    neighbours: list[PeerId],
    rng: np.random.Generator,
    round_: int = 0,
    params: Params | None = None,
) -> BristleCore:
    """A Bristle peer; its validation set is drawn from its own (featurized) data."""
    options = config.aggregator_options()
    bristle = BristleConfig(
        rounds=config.rounds,
        local_steps=_local_steps(config, learner),
        merge_timeout=config.merge_timeout,
        samples=learner.samples,
        alpha=float(options.get("alpha", 0.4)),
        candidates=int(options.get("candidates", 10)),
        overlap=int(options.get("overlap", 3)),
        max_models=int(options.get("max_models", 20)),
        center=bool(options.get("center", 1)),
    )
    labels = learner.y.numpy()
    rows = pick_validation(labels, int(options.get("validation_per_class", 10)), rng)
    validation = ValidationSet(learner.x[rows].numpy(), labels[rows])
    start = learner.params() if params is None else params
    return BristleCore(bristle, neighbours, start, validation, rng, round=round_)


def _transfer(config: RunConfig, data: Dataset) -> Transfer | None:
    """Bristle's frozen extractor (pretrained now if no file is given) and peer data."""
    if config.aggregator != "bristle":
        return None
    path = config.aggregator_params.get("extractor")
    notify = logging.getLogger("gossiplearn.bristle").warning
    extractor = extractor_for_run(data, config.model, config.seed, _text(path), notify)
    return transfer_setup(extractor, data)


def _text(value: int | float | str | None) -> str | None:
    return None if value is None else str(value)


def _modest_config(config: RunConfig, learner: Learner) -> ModestConfig:
    return config.modest_config(config.rounds, _local_steps(config, learner), learner.samples)


def _rebuilder(
    config: RunConfig,
    graph: nx.Graph,
    learners: list[Learner],
    streams: _Streams,
    cores: dict[PeerId, Core | AnyCore],
) -> Rebuilder:
    """How a peer joins or recovers. MoDeST copies the view of a random live peer (then
    advertises JOIN). Gossip: a joining peer connects to as many random live peers as the
    topology's mean degree, a recovering one to the neighbours it had; both start counting
    rounds where the network is. A recovering attacker attacks again."""
    degree = max(1, round(2 * graph.number_of_edges() / graph.number_of_nodes()))
    own_core = config.aggregator in ("sybilwall", "bristle")
    merge = None if own_core else _merge_rule(config)

    def rebuild(
        peer: PeerId, live: Sequence[PeerId], round_: int, params: Params | None
    ) -> tuple[Core | AnyCore, list[PeerId]]:
        i = int(peer)
        learner, rng = learners[i], streams.cores[i]
        old = cores.get(i)
        if config.protocol == "modest":
            source = cores[live[int(streams.churn.integers(len(live)))]]
            assert isinstance(source, ModestCore)
            modest = _modest_config(config, learner)
            start = learner.params() if params is None else params
            view = source.view_snapshot()
            keys = run_keys(config.seed)
            cores[i] = ModestCore(
                i, modest, start, view, rng, joining=True,
                signer=keys.signer(i), verifier=keys.verifier,
            )  # fmt: skip
            return cores[i], []
        if isinstance(old, AttackerCore):
            assert isinstance(old.inner, GossipCore)
            inner = _gossip_core(
                config, learner, old.inner.neighbours, old.inner.merge, rng, round_, params
            )
            attacker = _attacker(config, i, inner, old.attack, old.rng, old.identities)
            attacker.active = old.active
            cores[i] = attacker
            return attacker, []
        if old is not None and hasattr(old, "neighbours"):
            neighbours = sorted(old.neighbours)
        else:
            picks = streams.churn.choice(len(live), size=min(degree, len(live)), replace=False)
            neighbours = sorted(live[j] for j in picks)
        if config.aggregator == "bristle":
            cores[i] = _bristle_core(config, learner, neighbours, rng, round_, params)
        elif merge is None:
            cores[i] = _sybilwall_core(config, i, learner, neighbours, rng, round_, params)
        else:
            cores[i] = _gossip_core(config, learner, neighbours, merge, rng, round_, params)
        return cores[i], neighbours

    return rebuild


def _arm(
    config: RunConfig,
    adversary: Adversary,
    graph: nx.Graph,
    learners: list[Learner],
    streams: _Streams,
    cores: dict[PeerId, Core | AnyCore],
) -> None:
    """Turn the attackers' cores into attackers, and give each Sybil identity a core.

    Model attackers follow the network with plain averaging, so that the update they
    distort starts from the honest models; data attackers keep training their own poisoned
    model and merge nothing."""
    if adversary.attack.kind == "model":
        follow = get_aggregator("mean", beta=config.beta)
    else:
        follow = _keep_own
    for attacker, identities in adversary.identities.items():
        rng = streams.cores[attacker]
        neighbours = sorted(graph.neighbors(attacker))
        inner = _gossip_core(config, learners[attacker], neighbours, follow, rng)
        sybils = identities if config.sybils > 1 else None
        cores[attacker] = _attacker(config, attacker, inner, adversary.attack, rng, sybils)
    for sybil in adversary.sybils:
        cores[sybil] = IdleCore()


def _attacker(
    config: RunConfig,
    me: PeerId,
    inner: Core,
    attack: Attack,
    rng: np.random.Generator,
    identities: Mapping[PeerId, Sequence[PeerId]] | None,
) -> AttackerCore:
    """Attacker ``me`` around ``inner``; against SybilWall its pushes must be signed to
    travel, so it signs them with the keys of its identities."""
    sign = config.aggregator == "sybilwall"
    return attacker_core(config.seed, sign, me, inner, attack, rng, identities)


def _keep_own(own: Params, received: Sequence[Params]) -> Params:
    return own


def _evaluator(
    config: RunConfig, data: Dataset, streams: _Streams, transfer: Transfer | None = None
) -> Evaluator:
    x, y = data.test_x, data.test_y
    if config.eval_samples is not None and config.eval_samples < len(y):
        keep = np.sort(streams.eval_subset.choice(len(y), config.eval_samples, replace=False))
        x, y = x[keep], y[keep]
    if transfer is not None:  # evaluate the heads on test features computed once
        return Evaluator(
            transfer.model(), transfer.features(torch.from_numpy(x)), torch.from_numpy(y)
        )
    model = build_model(config.model, data.input_shape, data.num_classes, seed=0)
    if config.engine == "batched":  # scores many reported models at once
        return StackedEvaluator(model, torch.from_numpy(x), torch.from_numpy(y))
    return Evaluator(model, torch.from_numpy(x), torch.from_numpy(y))


def _check_fits(peers: int, data: Dataset) -> None:
    rows = len(data.train_y)
    if peers > rows:
        raise ConfigError(
            f"peers: {peers} peers need a training sample each, and {data.name} has {rows}: "
            f"use at most {rows} peers (joining ones included)"
        )


def simulate(
    config: RunConfig, on_metrics: Callable[[MetricsLine], None] | None = None
) -> RunResult:
    """Run one simulation to completion and return its summary and metrics lines."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    total = config.peers + config.joining_peers()
    # Cheapest checks first: the data decides how many peers can have a shard, before
    # anything is sized by the number of peers.
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    _check_fits(total, data)
    streams = _Streams.from_seed(config.seed, total)
    transfer = _transfer(config, data)
    if transfer is not None:  # peers never get the rows the extractor was trained on
        data = transfer.peer_data
    graph = build_topology(config.topology, config.peers, streams.topology_seed)
    adversary = plan_adversary(config, graph, streams.adversary, first_free_id=total)
    learners = _learners(config, data, streams, transfer)
    clean: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    if adversary is not None:
        clean = poison_learners(
            adversary,
            learners,
            data.num_classes,
            streams.adversary,
            config.backdoor_fraction,
            pool=(data.train_x, data.train_y),
        )
    if transfer is not None:
        transfer.featurize(learners)
    cores = _cores(config, graph, learners, streams)
    if adversary is not None:
        _arm(config, adversary, graph, learners, streams, cores)

    network = NetworkModel(NetworkSettings(**config.network.model_dump()), streams.network)
    # MoDeST: whichever aggregators report a round; else every peer that reports rounds.
    reporters = {peer for peer, core in cores.items() if core.reports_rounds}
    evaluator = _evaluator(config, data, streams, transfer)
    meter = success_meter(adversary.attack, data, evaluator) if adversary else None
    recorder = RoundRecorder(
        evaluator,
        None if config.protocol == "modest" else reporters,
        rounds=config.rounds,
        eval_every=config.eval_every,
        bytes_sent=lambda: simulator.stats.bytes_sent,
        emit=on_metrics or (lambda line: None),
        extra=attack_measures(adversary, meter, cores) if adversary else None,
    )
    pool = BatchedPool(learners) if config.engine == "batched" else SequentialPool(learners)
    simulator = Simulator(
        network,
        spec_of(learners[0].params()),
        pool,
        max_message_bytes=int(config.max_message_mb * 2**20),
        on_round=recorder.on_round,
        loss_rng=streams.loss,
    )
    poisoned = {a: (learners[a].x, learners[a].y) for a in clean}

    def switch_attack(on: bool) -> None:
        """Open or close the attack window: attackers lie (or not) and train on their
        poisoned (or clean) data."""
        for attacker in adversary.attackers if adversary else []:
            core = cores[attacker]
            if isinstance(core, AttackerCore):
                core.active = on
            if adversary and adversary.attack.kind != "model":
                pool.set_data(attacker, *(poisoned if on else clean)[attacker])

    sybils = set(adversary.sybils) if adversary else set()
    for peer, core in cores.items():
        simulator.add_peer(peer, core, trains=isinstance(peer, int) and peer not in sybils)
    simulator.on_gone, simulator.on_joined = recorder.peer_gone, recorder.add_reporter
    if config.timeline:
        steps = resolve(list(config.timeline), config.peers, streams.churn)
        simulator.timeline = TimelinePlayer(
            steps, _rebuilder(config, graph, learners, streams, cores), switch_attack
        )
        simulator.keep_last_params = any(step.kind == "recover" for step in steps)
        if any(step.kind == "attack-start" for step in steps):
            switch_attack(False)  # the attack waits for its window
    simulator.start_all()
    simulator.run(until=config.duration or math.inf)
    recorder.flush()

    final = recorder.lines[-1] if recorder.lines else {}
    summary = {
        "mean_accuracy": final.get("mean_accuracy"),
        "min_accuracy": final.get("min_accuracy"),
        "max_accuracy": final.get("max_accuracy"),
        "rounds": final.get("round", 0),
        # When the last round was reported: idle timers that fire later do not count.
        "virtual_time": final.get("time", simulator.now),
        "bytes_sent": simulator.stats.bytes_sent,
        "messages_sent": simulator.stats.messages_sent,
        "messages_rejected": dict(simulator.stats.messages_rejected),
        "peers_alive": len(simulator.live_peers()),
        "timeline": simulator.timeline.log if simulator.timeline else [],
        "attack_success_rate": final.get("attack_success_rate"),
        "attacker_weight": final.get("attacker_weight"),
        "attackers": adversary.attackers if adversary else [],
        "sybils": sorted(sybils),
        "peer_accuracy": {str(p): a for p, a in sorted(recorder.final_accuracy.items(), key=str)},
        "train_samples": sum(learner.samples for learner in learners),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
    }
    return RunResult(config, summary, recorder.lines, dict(simulator.stats.trainings))


def write_run(result: RunResult, out: Path) -> None:
    """Write summary.json, metrics.jsonl and accuracy.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out, result.summary)
    write_metrics(out, result.metrics)
    plot_accuracy(out, [("", result.metrics)], run_title(result.summary["config"]))


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
    streams = _Streams.from_seed(config.seed, total)
    graph = build_topology(config.topology, config.peers, streams.topology_seed)
    return graph, plan_adversary(config, graph, streams.adversary, first_free_id=total)


def planned_shard(config: RunConfig, train_y: np.ndarray, index: int) -> tuple[np.ndarray, int]:
    """Peer ``index``'s data shard (training-set rows) and initial-model seed, as in
    :func:`simulate` (joining peers included)."""
    total = config.peers + config.joining_peers()
    streams = _Streams.from_seed(config.seed, total)
    shards = partition(train_y, config.partition, total, streams.partition)
    seed = streams.init_seeds[0 if config.shared_init else index]
    return shards[index], seed
