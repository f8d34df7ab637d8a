"""Training throughput of the simulator's pools: batched vs sequential vs the compute bound.

The small CNN (``cnn``, ~100k parameters) on Fashion-MNIST, every peer training one local
epoch per round with SGD (momentum 0.9, batch 32) from its previous round's model:

(a) BatchedPool at 100 peers x 600 samples and 1,000 peers x 60 samples;
(b) the compute bound: one ``cnn`` trained as one network on one batch of P*B samples per
    step (the same arithmetic per step as (a), without any per-peer structure);
(c) SequentialPool (one Learner after another) at 100 peers x 600 samples.
The full run adds BatchedPool's generic ``vmap`` engine and a whole ``simulate()`` run
(gossip, 100 peers) with either pool.

(g) gossipy's own configuration, both engines in one run: 100 peers, a random 8-regular
    graph, Fashion-MNIST split IID, the MLP, one local epoch per round (batch 32, lr 0.1,
    no momentum), push to one random neighbour and merge 50/50 with what arrived (``--push
    one --buffer-size 1 --beta 0.5 --aggregator mean``), accuracy on the full test set
    every 10 rounds, 100 rounds: wall time, accuracy, bytes, training samples/s against one
    MLP trained on a batch of 100 x 32 (the compute bound), jobs per training flush.

(e) End to end: ``simulate()`` with ``engine="batched"``, 1,000 peers x 60
    samples (IID), ``regular:4``, gossip with vc, 100 rounds, accuracy on 500 test samples
    every 10 rounds: wall and CPU time, peak RSS, final mean accuracy, and where the time
    went (training flushes, merges, wire codec, evaluation; "other" is the rest: the
    event loop, the protocol cores, setup).

(x) 10,000 peers: ``simulate()`` with the batched engine, gossipy's merge and push settings
    on a random 8-regular graph, logistic regression, Fashion-MNIST's 60,000 training
    images split IID (6 per peer), 100 rounds, accuracy of every peer on 1,000 test images
    every 10 rounds: wall and CPU time, peak RSS, accuracy.

(k) Kernels: one vc merge of five CNN models (own + four received, clipped, as in (e)), and the
    accuracy of one model on 500 Fashion-MNIST test images, for the CNN, LeNet-5 and the
    MLP, scored stacked (many models through one network) and one model at a time
    (channels-last in batches of about 8 MB of activations, and as before: NCHW, 2,048).

Every measurement runs in a fresh process (so its peak RSS is its own), with the same
``torch.set_num_threads``. Samples/s counts training samples (one epoch per peer per round).

    python benchmarks/sim_throughput.py            # 3 timed rounds, + vmap and simulate rows
    python benchmarks/sim_throughput.py --quick    # 1 timed round, (e) 1 round, (g) 2 rounds
    python benchmarks/sim_throughput.py --only gossipy [--gossipy-rounds 100]   # (g) alone
    python benchmarks/sim_throughput.py --only e2e      # (e) alone
    python benchmarks/sim_throughput.py --only 10k [--large-rounds 100]         # (x) alone
    python benchmarks/sim_throughput.py --only kernels  # (k) alone, about a minute

Writes benchmarks/results/sim_throughput.json (sim_throughput_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from gossiplearn.learning.batched import DEFAULT_CHUNK_BYTES, BatchedPool, Engine, StackedEvaluator
from gossiplearn.learning.datasets import load_dataset
from gossiplearn.learning.models import build_model
from gossiplearn.learning.pool import SequentialPool, TrainingPool
from gossiplearn.learning.trainer import Learner

RESULTS = Path(__file__).parent / "results"
MODEL = "cnn"
BATCH = 32  # the default RunConfig.batch_size; 600 = 18x32 + 24 and 60 = 32 + 28
SHARDS = {100: 600, 1000: 60}  # peers -> samples per peer (60,000 training samples in all)
#: The end-to-end run: 1,000 peers x 60 samples (IID), gossip with vc.
E2E: dict[str, Any] = dict(
    dataset="fashion-mnist", model=MODEL, batch_size=BATCH, topology="regular:4",
    aggregator="vc", engine="batched", eval_samples=500,
)  # fmt: skip
#: (g): gossipy's configuration (its paper's and repository's MLP benchmark).
GOSSIPY: dict[str, Any] = dict(
    peers=100, topology="regular:8", dataset="fashion-mnist", partition="iid", model="mlp",
    local_epochs=1, batch_size=32, lr=0.1, momentum=0.0, weight_decay=0.0, push="one",
    buffer_size=1, beta=0.5, aggregator="mean", eval_every=10, seed=1,
)  # fmt: skip
#: (x): 10,000 peers with gossipy's gossip settings and the smallest model.
LARGE: dict[str, Any] = GOSSIPY | dict(
    peers=10_000, model="logreg", eval_samples=1000, engine="batched"
)  # fmt: skip
WARMUP_PEERS = 10  # one round on these first: allocator and oneDNN primitive caches


def _learners(peers: int, shard: int) -> list[Learner]:
    data = load_dataset("fashion-mnist")
    order = np.random.default_rng(0).permutation(len(data.train_y))
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    learners = []
    for i in range(peers):
        rows = torch.from_numpy(order[i * shard : (i + 1) * shard])
        model = build_model(MODEL, data.input_shape, data.num_classes, seed=i)
        learners.append(
            Learner(model, x[rows], y[rows], lr=0.01, momentum=0.9, batch_size=BATCH, seed=i)
        )
    return learners


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _pool_rounds(
    kind: str, peers: int, rounds: int, threads: int, chunk: int, engine: Engine = "auto"
) -> dict[str, Any]:
    """Rounds of one local epoch per peer; each round starts from the previous results."""
    torch.set_num_threads(threads)
    learners = _learners(peers, SHARDS[peers])
    steps = [learner.steps_per_epoch() for learner in learners]
    params = [learner.params() for learner in learners]
    started = time.perf_counter()
    pool: TrainingPool
    if kind == "batched":
        pool = BatchedPool.from_learners(learners, chunk_bytes=chunk, engine=engine)
    else:
        pool = SequentialPool(learners)
    setup = time.perf_counter() - started

    def one_round(count: int) -> float:
        started = time.perf_counter()
        tickets = [pool.submit(peer, params[peer], steps[peer]) for peer in range(count)]
        for peer, ticket in enumerate(tickets):
            trained = pool.result(ticket)
            assert trained is not None
            params[peer] = trained
        return time.perf_counter() - started

    one_round(min(peers, WARMUP_PEERS))
    times = [one_round(peers) for _ in range(rounds)]
    samples = sum(learner.samples for learner in learners)
    return {
        "samples_per_s": samples * rounds / sum(times),
        "round_s": times,
        "setup_s": setup,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _compute_bound(
    peers: int, steps: int, threads: int, model_name: str = MODEL, momentum: float = 0.9
) -> dict[str, Any]:
    """One model, one optimiser, P*B samples per step: the same arithmetic with no peers."""
    torch.set_num_threads(threads)
    data = load_dataset("fashion-mnist")
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    model = build_model(model_name, data.input_shape, data.num_classes, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
    loss = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    batch = peers * BATCH

    def step() -> float:
        started = time.perf_counter()
        rows = torch.randint(len(x), (batch,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss(model(x[rows]), y[rows]).backward()
        optimizer.step()
        return time.perf_counter() - started

    step()  # warm-up: the first step pays for allocations and oneDNN primitive creation
    times = [step() for _ in range(steps)]
    return {
        "samples_per_s": batch * steps / sum(times),
        "step_s": times,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _simulation(kind: str, rounds: int, threads: int) -> dict[str, Any]:
    """A whole gossip run, 100 peers x 600 samples, with either pool."""
    import gossiplearn.scenarios.run as run_module
    from gossiplearn import make_config, simulate

    jobs: list[BatchedPool] = []

    def batched(learners: list[Learner]) -> BatchedPool:
        jobs.append(BatchedPool(learners))
        return jobs[-1]

    if kind == "batched":  # the pool alone: training when a result is read, as before
        setattr(run_module, "SequentialPool", batched)  # noqa: B010 (patches the import)
    config = make_config(
        peers=100, rounds=rounds, topology="regular:8", dataset="fashion-mnist", model=MODEL,
        batch_size=BATCH, eval_samples=500, threads=threads, engine="sequential",
    )  # fmt: skip
    result = simulate(config)
    summary = result.summary
    out = {
        "wall_s": summary["wall_seconds"],
        "samples_per_s": summary["train_samples"] * rounds / summary["wall_seconds"],
        "mean_accuracy": summary["mean_accuracy"],
        "peak_rss_mb": _peak_rss_mb(),
    }
    if jobs:
        out["jobs_per_flush"] = jobs[0].jobs_run / max(1, jobs[0].flushes)
    return out


def _gossipy(engine: str, rounds: int, threads: int) -> dict[str, Any]:
    """(g) One engine on gossipy's configuration."""
    import gossiplearn.scenarios.run as run_module
    from gossiplearn import make_config, simulate

    pools: list[BatchedPool] = []

    def batched(learners: list[Learner], **options: Any) -> BatchedPool:
        pools.append(BatchedPool(learners, **options))
        return pools[-1]

    setattr(run_module, "BatchedPool", batched)  # noqa: B010 (patches the import)
    config = make_config(**GOSSIPY, rounds=rounds, engine=engine, threads=threads)
    cpu = time.process_time()
    result = simulate(config, on_metrics=_progress(f"(g) {engine}"))
    summary = result.summary
    wall = summary["wall_seconds"]
    out = {
        "engine": result.config.engine,
        "rounds": summary["rounds"],
        "wall_s": wall,
        "cpu_s": round(time.process_time() - cpu, 1),
        "samples_per_s": summary["train_samples"] * rounds / wall,
        "mean_accuracy": summary["mean_accuracy"],
        "bytes_sent": summary["bytes_sent"],
        "messages_sent": summary["messages_sent"],
        "virtual_time": summary["virtual_time"],
        "peak_rss_mb": _peak_rss_mb(),
    }
    if pools:
        out["jobs_per_flush"] = pools[0].jobs_run / max(1, pools[0].flushes)
    return out


def _gossipy_report(rounds: int, threads: int, console: Console) -> dict[str, Any]:
    """(g) Both engines and the MLP's compute bound, each in its own process."""
    runs = {engine: _isolated(_gossipy, engine, rounds, threads) for engine in ENGINES}
    bound = _isolated(_compute_bound, GOSSIPY["peers"], 5, threads, "mlp", 0.0)
    batched, sequential = runs["batched"], runs["sequential"]
    report = {
        "config": GOSSIPY | {"rounds": rounds},
        "runs": runs,
        "mlp_compute_bound": bound,
        "speedup": sequential["wall_s"] / batched["wall_s"],
        "accuracy_difference": abs(batched["mean_accuracy"] - sequential["mean_accuracy"]),
        "same_bytes": batched["bytes_sent"] == sequential["bytes_sent"],
    }
    title = f"(g) gossipy's configuration: 100 peers, MLP, push one, {rounds} rounds"
    table = Table("engine", "wall s", "samples/s", "of bound", "accuracy", "bytes", "jobs/flush",
                  "peak RSS MB", title=title)  # fmt: skip
    for engine, run in runs.items():
        table.add_row(
            engine, f"{run['wall_s']:,.1f}", f"{run['samples_per_s']:,.0f}",
            f"{run['samples_per_s'] / bound['samples_per_s']:.0%}",
            f"{run['mean_accuracy']:.4f}", f"{run['bytes_sent']:,}",
            f"{run.get('jobs_per_flush', 1):.0f}", f"{run['peak_rss_mb']:,.0f}",
        )  # fmt: skip
    table.add_row("one MLP, batch 3,200", "", f"{bound['samples_per_s']:,.0f}", "100%")
    console.print(table)
    console.print(
        f"batched {report['speedup']:.2f}x faster than sequential; accuracy differs by "
        f"{report['accuracy_difference']:.4f}; same bytes: {report['same_bytes']}"
    )
    return report


ENGINES = ("batched", "sequential")


def _progress(part: str) -> Any:
    """A simulation's metrics callback that prints each evaluation, with the wall time and
    peak RSS so far (these runs take up to half an hour)."""
    start = time.perf_counter()

    def progress(line: dict[str, Any]) -> None:
        print(
            f"  {part} round {line['round']}: mean accuracy {line['mean_accuracy']:.3f}, "
            f"{time.perf_counter() - start:,.0f} s, peak RSS {_peak_rss_mb():,.0f} MB",
            flush=True,
        )

    return progress


def _accuracy_by_round(metrics: list[dict[str, Any]]) -> dict[int, float]:
    return {line["round"]: line["mean_accuracy"] for line in metrics}


def _large(rounds: int, threads: int) -> dict[str, Any]:
    """(x) 10,000 peers, gossip with the batched engine."""
    from gossiplearn import make_config, simulate

    config = make_config(**LARGE, rounds=rounds, threads=threads)
    cpu = time.process_time()
    result = simulate(config, on_metrics=_progress("(x)"))
    summary = result.summary
    return {
        "config": LARGE | {"rounds": rounds},
        "engine": result.config.engine,
        "samples_per_peer": summary["train_samples"] // LARGE["peers"],
        "wall_s": summary["wall_seconds"],
        "cpu_s": round(time.process_time() - cpu, 1),
        "peak_rss_mb": _peak_rss_mb(),
        "mean_accuracy": summary["mean_accuracy"],
        "accuracy_by_round": _accuracy_by_round(result.metrics),
        "messages_sent": summary["messages_sent"],
        "bytes_sent": summary["bytes_sent"],
    }


def _large_report(rounds: int, threads: int, console: Console) -> dict[str, Any]:
    run = _isolated(_large, rounds, threads)
    title = f"(x) {LARGE['peers']:,} peers, logreg, regular:8, push one, {rounds} rounds"
    table = Table("measure", "value", title=title)
    table.add_row("wall time", f"{run['wall_s']:,.0f} s ({run['wall_s'] / 60:.1f} min)")
    table.add_row("CPU time", f"{run['cpu_s']:,.0f} s")
    table.add_row("peak RSS", f"{run['peak_rss_mb']:,.0f} MB")
    table.add_row("samples per peer", str(run["samples_per_peer"]))
    table.add_row("final mean accuracy", f"{run['mean_accuracy']:.3f}")
    table.add_row("messages", f"{run['messages_sent']:,}")
    console.print(table)
    return run


class _Breakdown:
    """Exclusive wall seconds per part of a simulation: a part that runs inside another
    (a training flush forced while a message is encoded, a deferred merge run inside a
    flush) counts for itself only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list[float]] = []  # [start, seconds of nested parts]

    def timed(self, part: str, function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return function(*args, **kwargs)
            finally:
                start, nested = self._stack.pop()
                spent = time.perf_counter() - start
                self.seconds[part] = self.seconds.get(part, 0.0) + spent - nested
                if self._stack:
                    self._stack[-1][1] += spent

        return call


def _end_to_end(peers: int, rounds: int, eval_every: int, threads: int) -> dict[str, Any]:
    """A whole gossip + vc run with the batched engine, timed part by part."""
    import gossiplearn.aggregation as aggregation
    import gossiplearn.scenarios.run as run_module
    import gossiplearn.scenarios.simulator as simulator_module
    from gossiplearn import make_config, simulate
    from gossiplearn.learning.trainer import Evaluator

    parts = _Breakdown()
    aggregation.AGGREGATORS["vc"] = parts.timed("merge", aggregation.AGGREGATORS["vc"])
    for name in ("encode", "decode_message"):
        setattr(simulator_module, name, parts.timed("codec", getattr(simulator_module, name)))
    setattr(Evaluator, "accuracy", parts.timed("eval", Evaluator.accuracy))  # noqa: B010
    scored = parts.timed("eval", StackedEvaluator.accuracies)
    setattr(StackedEvaluator, "accuracies", scored)  # noqa: B010
    pools: list[BatchedPool] = []

    def batched(learners: list[Learner], **options: Any) -> BatchedPool:
        pools.append(BatchedPool(learners, **options))
        setattr(pools[-1], "flush", parts.timed("train", pools[-1].flush))  # noqa: B010
        return pools[-1]

    setattr(run_module, "BatchedPool", batched)  # noqa: B010 (patches the import)
    config = make_config(**E2E, peers=peers, rounds=rounds, eval_every=eval_every, threads=threads)
    cpu = time.process_time()
    result = simulate(config, on_metrics=_progress("(e)"))
    summary = result.summary
    wall = summary["wall_seconds"]
    seconds = {part: round(value, 2) for part, value in sorted(parts.seconds.items())}
    seconds["other"] = round(wall - sum(parts.seconds.values()), 2)
    return {
        "peers": peers,
        "samples_per_peer": summary["train_samples"] // peers,
        "rounds": summary["rounds"],
        "eval_every": eval_every,
        "wall_s": wall,
        "cpu_s": round(time.process_time() - cpu, 1),
        "seconds": seconds,
        "train_samples_per_s": summary["train_samples"] * rounds / wall,
        "jobs_per_flush": pools[0].jobs_run / max(1, pools[0].flushes),
        "mean_accuracy": summary["mean_accuracy"],
        "accuracy_by_round": _accuracy_by_round(result.metrics),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _median_ms(function: Any, repeats: int) -> float:
    function()  # warm-up: allocations, oneDNN primitives
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def _kernels(threads: int) -> dict[str, Any]:
    """Milliseconds of one vc merge and of scoring one model, each way (see (k))."""
    from gossiplearn.aggregation import get_aggregator
    from gossiplearn.learning.trainer import params_of

    torch.set_num_threads(threads)
    data = load_dataset("fashion-mnist")
    x, y = torch.from_numpy(data.test_x[:500]), torch.from_numpy(data.test_y[:500])

    def models(name: str, count: int) -> list[dict[str, Any]]:
        return [
            params_of(build_model(name, data.input_shape, data.num_classes, seed=seed))
            for seed in range(count)
        ]

    cnn = models(MODEL, 5)
    vc = get_aggregator("vc", clip=True)  # as (e) merges: clipping is on by default
    out: dict[str, Any] = {"vc_merge_ms": _median_ms(lambda: vc(cnn[0], cnn[1:]), 50)}
    for name in (MODEL, "lenet5", "mlp"):
        scored = models(name, 20)
        for way in ("stacked", "one_at_a_time", "one_at_a_time_nchw_2048"):
            template = build_model(name, data.input_shape, data.num_classes, seed=0)
            evaluator = StackedEvaluator(template, x, y)
            if way != "stacked":
                evaluator.net = None  # the MLP too: what Evaluator.accuracy costs
            if way == "one_at_a_time_nchw_2048":  # Evaluator's layout and batch before
                evaluator.model = template.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
                evaluator.x, evaluator.batch_size = x, 2048
            ms = _median_ms(lambda e=evaluator, m=scored: e.accuracies(m), 3) / len(scored)
            out[f"eval_ms_per_model/{name}/{way}"] = ms
    return out


def _kernels_table(run: dict[str, Any]) -> Table:
    table = Table("kernel", "ms", title="(k) one merge, one model scored on 500 images")
    for name, ms in run.items():
        table.add_row(name, f"{ms:.1f}")
    return table


def _end_to_end_table(run: dict[str, Any]) -> Table:
    title = (
        f"(e) {run['peers']:,} peers x {run['samples_per_peer']} samples, gossip + vc, "
        f"{run['rounds']} rounds, eval every {run['eval_every']}"
    )
    table = Table("measure", "value", title=title)
    table.add_row("wall time", f"{run['wall_s']:,.0f} s ({run['wall_s'] / 60:.1f} min)")
    table.add_row("CPU time", f"{run['cpu_s']:,.0f} s")
    table.add_row("peak RSS", f"{run['peak_rss_mb']:,.0f} MB")
    table.add_row("final mean accuracy", f"{run['mean_accuracy']:.3f}")
    table.add_row("training samples/s", f"{run['train_samples_per_s']:,.0f}")
    table.add_row("jobs per training flush", f"{run['jobs_per_flush']:.0f}")
    for part, seconds in run["seconds"].items():
        table.add_row(f"  {part}", f"{seconds:,.0f} s")
    return table


def _isolated(function: Any, *args: Any) -> dict[str, Any]:
    """Run ``function(*args)`` in a fresh process, so that its peak RSS is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as worker:
        result: dict[str, Any] = worker.apply(function, args)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed round, under 2 minutes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every run")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 3, quick 1)")
    parser.add_argument("--e2e-rounds", type=int, help="(e) rounds (default 100, quick 1)")
    parser.add_argument("--e2e-eval-every", type=int, default=10, help="(e) eval_every")
    parts = ["gossipy", "e2e", "10k", "kernels"]
    parser.add_argument("--only", choices=parts, help="run only this part")
    parser.add_argument("--gossipy-rounds", type=int, help="(g) rounds (default 100, quick 2)")
    parser.add_argument("--large-rounds", type=int, help="(x) rounds (default 100, quick 1)")
    parser.add_argument(
        "--chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / 2**20, help="BatchedPool chunk"
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    threads, chunk = args.threads, int(args.chunk_mb * 2**20)
    load_before = os.getloadavg()  # other processes on the machine skew every number

    console = Console(highlight=False)
    console.print(f"[dim]{MODEL} on fashion-mnist, batch {BATCH}, {threads} torch threads[/]")
    report: dict[str, Any] = {
        "model": MODEL,
        "dataset": "fashion-mnist",
        "batch_size": BATCH,
        "threads": threads,
        "rounds": rounds,
        "chunk_mb": args.chunk_mb,
        "quick": args.quick,
    }
    only = {"threads": threads, "quick": args.quick}
    if args.only in (None, "gossipy"):
        gossipy_rounds = args.gossipy_rounds or (2 if args.quick else 100)
        report["gossipy"] = only["gossipy"] = _gossipy_report(gossipy_rounds, threads, console)
    if args.only == "gossipy":
        return _write(only, args.quick, "sim_throughput_gossipy", load_before, console)
    if args.only in (None, "kernels"):
        report["kernels"] = only["kernels"] = _isolated(_kernels, threads)
        console.print(_kernels_table(report["kernels"]))
    if args.only == "kernels":
        return _write(only, args.quick, "sim_throughput_kernels", load_before, console)
    if args.only in (None, "10k"):
        large_rounds = args.large_rounds or (1 if args.quick else 100)
        report["peers_10000"] = only["peers_10000"] = _large_report(large_rounds, threads, console)
    if args.only == "10k":
        return _write(only, args.quick, "sim_throughput_10k", load_before, console)
    # (e): the longest run, and its table is printed as soon as it is done.
    e2e_rounds = args.e2e_rounds or (1 if args.quick else 100)
    e2e = _isolated(_end_to_end, 1000, e2e_rounds, args.e2e_eval_every, threads)
    report["end_to_end_1000_peers"] = only["end_to_end_1000_peers"] = e2e
    console.print(_end_to_end_table(e2e))
    if args.only == "e2e":
        return _write(only, args.quick, "sim_throughput_e2e", load_before, console)

    table = Table("peers", "samples/peer", "run", "samples/s", "ratio", "peak RSS MB")

    def row(peers: int, name: str, run: dict[str, Any]) -> None:
        rate, rss = f"{run['samples_per_s']:,.0f}", f"{run['peak_rss_mb']:,.0f}"
        table.add_row(str(peers), str(SHARDS[peers]), name, rate, "", rss)

    def ratio(name: str, value: float) -> None:
        table.add_row("", "", name, "", f"{value:.2f}", "")

    for peers, shard in SHARDS.items():
        batched = _isolated(_pool_rounds, "batched", peers, rounds, threads, chunk)
        bound = _isolated(_compute_bound, peers, 1 if args.quick else 5, threads)
        entry: dict[str, Any] = {
            "samples_per_peer": shard,
            "batched": batched,
            "compute_bound": bound,
        }
        entry["ratio_vs_compute_bound"] = batched["samples_per_s"] / bound["samples_per_s"]
        row(peers, "(a) BatchedPool", batched)
        row(peers, "(b) compute bound", bound)
        if peers == 100:
            sequential = _isolated(_pool_rounds, "sequential", peers, rounds, threads, chunk)
            entry["sequential"] = sequential
            entry["ratio_vs_sequential"] = batched["samples_per_s"] / sequential["samples_per_s"]
            report["ratio_vs_compute_bound"] = entry["ratio_vs_compute_bound"]
            report["ratio_vs_sequential"] = entry["ratio_vs_sequential"]
            row(peers, "(c) SequentialPool", sequential)
            if not args.quick:
                vmapped = _isolated(_pool_rounds, "batched", peers, rounds, threads, chunk, "vmap")
                entry["batched_vmap_engine"] = vmapped
                row(peers, "(a') BatchedPool, vmap engine", vmapped)
        report[f"peers_{peers}"] = entry
        ratio("a/b", entry["ratio_vs_compute_bound"])
        if "ratio_vs_sequential" in entry:
            ratio("a/c", entry["ratio_vs_sequential"])
        table.add_section()

    if not args.quick:
        sims = {
            kind: _isolated(_simulation, kind, rounds, threads)
            for kind in ("batched", "sequential")
        }
        report["simulate_100_peers"] = sims
        row(100, "simulate(), BatchedPool", sims["batched"])
        row(100, "simulate(), SequentialPool", sims["sequential"])
        ratio("speed-up", sims["batched"]["samples_per_s"] / sims["sequential"]["samples_per_s"])
    console.print(table)

    return _write(report, args.quick, "sim_throughput", load_before, console)


def _write(
    report: dict[str, Any],
    quick: bool,
    name: str,
    load_before: tuple[float, float, float],
    console: Console,
) -> int:
    report["load_average_before_after"] = [load_before, os.getloadavg()]
    report["machine"] = _machine()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (f"{name}_quick.json" if quick else f"{name}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"[dim]wrote {out}[/]")
    return 0


def _machine() -> dict[str, Any]:
    """The CPU and libraries a run measured: timings depend on them (the CNN pool trains
    about twice as fast on an AVX-512 Xeon as on an AVX2 EPYC)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {
        "cpu": next(names, platform.processor()),
        "cpus": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
