"""Assemble a simulated run from a :class:`~gossiplearn.config.RunConfig` and execute it.

Every random choice comes from one ``numpy.random.SeedSequence(config.seed)``, split into
independent streams for the topology, the partition, the network, the peers' protocol
cores, their training batches and their initial weights, and churn. Peers that join during
the run get their data shard and streams at the start, after the initial peers'.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch

from gossiplearn.aggregation import get_aggregator, get_shares, has_shares
from gossiplearn.attacks import Attack
from gossiplearn.attacks.adversary import (
    Adversary,
    attack_measures,
    attacker_merge,
    keep_own,
    plan_adversary,
    poison_learners,
    success_meter,
)
from gossiplearn.attacks.core import AttackerCore, IdleCore
from gossiplearn.config import RunConfig
from gossiplearn.errors import ConfigError
from gossiplearn.learning.batched import BatchedPool, StackedEvaluator, batched_problem
from gossiplearn.learning.datasets import Dataset, load_dataset
from gossiplearn.learning.models import build_model, check_model_fits
from gossiplearn.learning.partition import partition
from gossiplearn.learning.pool import SequentialPool, deferring
from gossiplearn.learning.pretrain import Transfer, extractor_for_run, transfer_setup
from gossiplearn.learning.trainer import Evaluator, Learner
from gossiplearn.plan import Streams
from gossiplearn.protocols.dpsgd import metropolis_hastings_weights
from gossiplearn.protocols.events import AnyCore, Core
from gossiplearn.protocols.fedavg import SERVER, FedAvgClient, FedAvgConfig, FedAvgServer
from gossiplearn.protocols.feedback import ModelLink
from gossiplearn.protocols.gossip import GossipCore, Merge
from gossiplearn.protocols.messages import ModelSpec, spec_of
from gossiplearn.protocols.modest import SharesView, View
from gossiplearn.protocols.modest_messages import Activity
from gossiplearn.protocols.registry import CoreSpec, build_core
from gossiplearn.results import plot_accuracy, run_title, write_metrics, write_summary
from gossiplearn.scenarios.keys import attacker_core, run_keys
from gossiplearn.scenarios.late import LateRejection
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


def _learners(
    config: RunConfig, data: Dataset, streams: Streams, transfer: Transfer | None = None
) -> list[Learner]:
    peers = config.peers + config.joining_peers()
    shards = partition(data.train_y, config.partition, peers, streams.partition, data.train_groups)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    learners = []
    for i, shard in enumerate(shards):
        seed = streams.init_seeds[0] if config.shared_init else streams.init_seeds[i]
        if transfer is not None:  # a frozen extractor under a zero head: no init to seed
            model: torch.nn.Module = transfer.model()
        else:
            model = build_model(config.model, data.input_shape, data.num_classes, seed=seed)
            if i == 0:
                check_model_fits(model, config.model, x[:1], data.num_classes)
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
    config: RunConfig, graph: nx.Graph, learners: list[Learner], streams: Streams
) -> dict[PeerId, Core | AnyCore]:
    """The cores of the initial peers (ids 0..peers-1; FedAvg adds its server)."""
    cores: dict[PeerId, Core | AnyCore] = {}
    initial = learners[: config.peers]
    if config.protocol == "fedavg":
        for i, learner in enumerate(initial):
            cores[i] = FedAvgClient(_local_steps(config, learner), learner.samples)
        clients_per_round = max(1, round(config.sample_fraction * config.peers))
        fed = FedAvgConfig(config.rounds, clients_per_round, round_timeout=config.merge_timeout)
        cores[SERVER] = FedAvgServer(
            fed, list(range(config.peers)), learners[0].params(), streams.cores[0]
        )
        return cores
    name = config.core_protocol
    view: dict[PeerId, Activity] = dict.fromkeys(range(config.peers), Activity(0))
    merge = _merge_rule(config) if name == "gossip" else None
    for i, learner in enumerate(initial):
        weights = metropolis_hastings_weights(graph, i) if name == "dpsgd" else None
        cores[i] = _core(
            config, name, i, learner, streams.cores[i], neighbours=sorted(graph.neighbors(i)),
            merge=merge, weights=weights, view=view,
        )  # fmt: skip
    return cores


def _merge_rule(config: RunConfig) -> Merge:
    """The configured aggregation rule; with the batched engine it waits, when the own
    model is still being trained, until its result is read (same model, more batching)."""
    rule = get_aggregator(config.aggregator, **config.aggregator_options())
    return deferring(rule) if config.engine == "batched" else rule


def _core(
    config: RunConfig,
    name: str,
    peer: PeerId,
    learner: Learner,
    rng: np.random.Generator,
    *,
    neighbours: Sequence[PeerId] = (),
    round_: int = 0,
    params: Params | None = None,
    merge: Merge | None = None,
    weights: Mapping[PeerId, float] | None = None,
    view: View | None = None,
    joining: bool = False,
) -> Core | AnyCore:
    """Peer ``peer``'s core of protocol ``name``, from the registry. Signed messages
    (SybilWall histories, MoDeST membership) use the run's seeded keys."""
    keys = run_keys(config.seed)
    # Attack runs measure the weight honest peers give attackers (attacker_weight).
    weigh = None
    if name == "gossip" and config.attack is not None and has_shares(config.aggregator):
        weigh = get_shares(config.aggregator, **config.aggregator_options())
    spec = CoreSpec(
        peer=peer,
        settings=config,
        rounds=config.rounds,
        steps=_local_steps(config, learner),
        samples=learner.samples,
        params=learner.params() if params is None else params,
        rng=rng,
        neighbours=neighbours,
        round=round_,
        signer=keys.signer(peer),
        verifier=keys.verifier,
        merge=merge,
        weigh=weigh,
        weights=weights,
        one_peer_exp=config.peers if config.dpsgd_graph == "one-peer-exp" else None,
        data=(learner.x.numpy(), learner.y.numpy()) if name == "bristle" else None,
        view=view,
        joining=joining,
    )
    return build_core(name, spec)


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


def _rebuilder(
    config: RunConfig,
    graph: nx.Graph,
    learners: list[Learner],
    streams: Streams,
    cores: dict[PeerId, Core | AnyCore],
) -> Rebuilder:
    """How a peer joins or recovers. MoDeST copies the view of a random live peer (then
    advertises JOIN). Gossip: a joining peer connects to as many random live peers as the
    topology's mean degree, a recovering one to the neighbours it had; both start counting
    rounds where the network is. A recovering attacker attacks again."""
    degree = max(1, round(2 * graph.number_of_edges() / graph.number_of_nodes()))
    name = config.core_protocol
    merge = _merge_rule(config) if name == "gossip" else None

    def rebuild(
        peer: PeerId, live: Sequence[PeerId], round_: int, params: Params | None
    ) -> tuple[Core | AnyCore, list[PeerId]]:
        i = int(peer)
        learner, rng = learners[i], streams.cores[i]
        old = cores.get(i)
        if name == "modest":
            source = cores[live[int(streams.churn.integers(len(live)))]]
            assert isinstance(source, SharesView)  # a live MoDeST peer
            view = source.view_snapshot()
            cores[i] = _core(config, name, i, learner, rng, params=params, view=view, joining=True)
            return cores[i], []
        if isinstance(old, AttackerCore):
            inner = old.inner
            assert isinstance(inner, GossipCore)
            rebuilt = _core(
                config, "gossip", i, learner, rng, neighbours=inner.neighbours, round_=round_,
                params=params, merge=inner.merge,
            )  # fmt: skip
            assert isinstance(rebuilt, GossipCore)
            attacker = _attacker(config, i, rebuilt, old.attack, old.rng, old.identities)
            attacker.active = old.active
            cores[i] = attacker
            return attacker, []
        if old is not None and hasattr(old, "neighbours"):
            neighbours = sorted(old.neighbours)
        else:
            picks = streams.churn.choice(len(live), size=min(degree, len(live)), replace=False)
            neighbours = sorted(live[j] for j in picks)
        cores[i] = _core(
            config, name, i, learner, rng, neighbours=neighbours, round_=round_, params=params,
            merge=merge,
        )  # fmt: skip
        return cores[i], neighbours

    return rebuild


def _arm(
    config: RunConfig,
    adversary: Adversary,
    graph: nx.Graph,
    learners: list[Learner],
    streams: Streams,
    cores: dict[PeerId, Core | AnyCore],
) -> None:
    """Turn the attackers' cores into attackers, and give each Sybil identity a core.

    (How attackers merge: gossiplearn.attacks.adversary.attacker_merge.)"""
    follow = attacker_merge(adversary.attack, config.beta)
    if config.sent_params(learners[0].params()).keys() != learners[0].params().keys():
        follow = keep_own  # Bristle heads without a bias: nothing to average into a model
    for attacker, identities in adversary.identities.items():
        rng = streams.cores[attacker]
        neighbours = sorted(graph.neighbors(attacker))
        inner = _core(config, "gossip", attacker, learners[attacker], rng, neighbours=neighbours,
                      merge=follow)  # fmt: skip
        assert isinstance(inner, GossipCore)
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
    sign = config.core_protocol == "sybilwall"
    attacker = attacker_core(config.seed, sign, me, inner, attack, rng, identities)
    attacker.outgoing = config.sent_params  # what honest peers send (Bristle: no bias)
    return attacker


def _evaluator(
    config: RunConfig, data: Dataset, streams: Streams, transfer: Transfer | None = None
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
        return StackedEvaluator(
            model, torch.from_numpy(x), torch.from_numpy(y), device=_device(config)
        )
    return Evaluator(model, torch.from_numpy(x), torch.from_numpy(y))


def _runnable_engine(config: RunConfig, learner: Learner) -> RunConfig:
    """``config`` with the engine that runs: ``auto`` resolved, and ``batched`` replaced by
    ``sequential`` (saying why) where the batched engine cannot train this model."""
    if config.engine == "sequential":
        return config
    log = logging.getLogger(__name__)
    if config.engine == "auto":  # the cheap check first: the probe trains a step
        problem = _batched_unproven(config) or batched_problem(learner)
        engine = "sequential" if problem else "batched"
        log.info("engine auto: %s%s", engine, f" ({problem})" if problem else "")
        return config.model_copy(update={"engine": engine})
    problem = batched_problem(learner)
    if problem is None:
        return config
    log.warning(
        "the batched engine cannot train --model %s (%s): running the sequential engine",
        config.model,
        problem,
    )
    return config.model_copy(update={"engine": "sequential"})


#: Protocols ``auto`` runs batched: tests hold them equal to the sequential engine, and they
#: run faster batched (50 peers, MLP: dpsgd 2.4x, fedavg 2.8x, modest 1.7x, gossip 1.5x).
#: SybilWall reads each model as it arrives, which flushes the pool every time: 4.5x
#: slower batched. Bristle's heads are not held equal by tests.
_FASTER_BATCHED = frozenset({"gossip", "dpsgd", "fedavg", "modest"})


def _batched_unproven(config: RunConfig) -> str | None:
    """Why ``auto`` keeps to the sequential engine for this run's protocol, or None: it
    takes the batched engine where tests hold it equal to the sequential one."""
    if config.core_protocol not in _FASTER_BATCHED:
        return f"protocol {config.core_protocol} runs sequentially"
    if config.attack is not None:
        return "runs with attacks run sequentially"
    if config.compression_spec.enabled:
        return "compressed runs run sequentially"
    return None


def _link_factory(config: RunConfig, spec: ModelSpec) -> Callable[[PeerId], ModelLink]:
    """Each link (each peer, each incarnation) draws stream ids and random sparsification
    from its own generator, derived from the seed in the order links are made."""
    made = itertools.count()
    compression = config.compression_spec

    def link(peer: PeerId) -> ModelLink:
        rng = np.random.default_rng([config.seed, _LINK_STREAM, next(made)])
        return ModelLink(compression, spec, rng)

    return link


#: Separates the links' generators from the run's other seeded streams.
_LINK_STREAM = 0x11C0


def _device(config: RunConfig) -> torch.device:
    """The torch device ``--device`` names, checked to exist here."""
    try:
        device = torch.device(config.device)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(
            f"device: {config.device!r} is not a torch device ({error}): use cpu, cuda, "
            "cuda:N, mps ..."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {config.device!r}: torch finds no CUDA GPU on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: {config.device!r}: torch finds no MPS device here")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: {config.device!r}: this machine has no such GPU")
    return device


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
    """Run one simulation to completion and return its summary and metrics lines.

    The batched engine decodes messages late (see :mod:`gossiplearn.scenarios.late`); if a
    message decoded late turns out to be one its receiver would have rejected (a model
    that diverged to non-finite values), the run is repeated with messages decoded on
    arrival, so that it gives what the sequential engine gives.
    """
    started = time.perf_counter()
    with _rare_collections():
        try:
            return _simulate(config, on_metrics, started, late_decoding=True)
        except LateRejection as error:
            logging.getLogger("gossiplearn.simulate").warning(
                "%s: running again with every message decoded on arrival", error
            )
            return _simulate(config, on_metrics, started, late_decoding=False)


@contextlib.contextmanager
def _rare_collections() -> Iterator[None]:
    """Python's cycle collector, far less often while a simulation runs.

    Each full collection rescans every live object, and a simulation holds millions that
    live for rounds (models, messages, deferred merges): at 10,000 peers the default
    thresholds cost a third of the run. Reference counting still frees all that is not
    in a cycle at once.
    """
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _simulate(
    config: RunConfig,
    on_metrics: Callable[[MetricsLine], None] | None,
    started: float,
    *,
    late_decoding: bool,
) -> RunResult:
    torch.set_num_threads(config.threads)
    if config.engine == "batched" and config.compression_spec.enabled:
        logging.getLogger("gossiplearn.simulate").warning(
            "--engine batched defers training that compression has to read at once: "
            "running the sequential engine (same models) with --compression %s",
            config.compression,
        )
        config = config.model_copy(update={"engine": "sequential"})
    total = config.peers + config.joining_peers()
    # Cheapest checks first: the data decides how many peers can have a shard, before
    # anything is sized by the number of peers.
    data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
    _check_fits(total, data)
    streams = Streams.from_seed(config.seed, total)
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
    config = _runnable_engine(config, learners[0])
    if config.engine == "batched":
        _device(config)  # a bad device is a usage error, found before the run starts
    elif config.device != "cpu":
        logging.getLogger("gossiplearn.simulate").warning(
            "--device %s: the sequential engine trains on the cpu", config.device
        )
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
    pool = (
        BatchedPool(learners, device=_device(config))
        if config.engine == "batched"
        else SequentialPool(learners)
    )
    simulator = Simulator(
        network,
        spec_of(config.sent_params(learners[0].params())),  # what peers send (and decode)
        pool,
        max_message_bytes=int(config.max_message_mb * 2**20),
        on_round=recorder.on_round,
        loss_rng=streams.loss,
        late_decoding=late_decoding and config.engine == "batched",
    )
    if config.compression_spec.enabled:
        simulator.link_factory = _link_factory(config, simulator.spec)
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
    simulator.decode_late()  # after the last report, which it must not change

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
