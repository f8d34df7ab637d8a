"""Compressed gossip: bytes to reach a target accuracy, and final accuracy, per spec.

VC gossip on Fashion-MNIST (IID and dirichlet:0.3) with each ``--compression`` spec, on
the same seed, topology and data; then MoDeST without compression and with the best spec
(the one that saves the most bytes while losing at most 1 point of final accuracy on
every partition, else the one that loses least). The table gives the final mean accuracy,
its change against ``none`` in points, the bytes sent until the mean accuracy first
reaches the target, and how many times fewer bytes than ``none`` that is (and in all).

    python benchmarks/compression.py            # 100 peers, regular:8, 30 rounds
    python benchmarks/compression.py --quick    # scaled down, under 2 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gossiplearn import make_config, simulate

RESULTS = Path(__file__).parent / "results"
SPECS = [
    "none",
    "int8",
    "topk:0.1+int8",
    "topk:0.05+int8",
    "float16",
    "bfloat16",
    "random:0.1+int8",
]
QUICK_SPECS = ["none", "int8", "topk:0.1+int8"]


def first_reaching(metrics: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((m for m in metrics if m["mean_accuracy"] >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run, < 2 minutes")
    parser.add_argument("--peers", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--target", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--specs", help="comma-separated specs (default: a set of each kind)")
    parser.add_argument("--partitions", default="iid,dirichlet:0.3")
    parser.add_argument("--no-modest", action="store_true", help="skip the MoDeST runs")
    parser.add_argument(
        "--modest-only", metavar="SPEC", help="run only MoDeST, without and with SPEC"
    )
    parser.add_argument("--local-epochs", type=float)
    parser.add_argument("--name", help="results file name (default: compression[_quick])")
    parser.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="only merge the results of earlier runs (e.g. one per partition) into one table",
    )
    args = parser.parse_args()
    console = Console(highlight=False, width=150)
    name = args.name or ("compression_quick" if args.quick else "compression")
    if args.combine:
        parts = [json.loads(path.read_text()) for path in args.combine]
        settings = parts[0]["settings"] | {
            "partitions": list(
                dict.fromkeys(p for part in parts for p in part["settings"]["partitions"])
            )
        }
        if args.target:
            settings["target"] = args.target
        report(console, settings, [r for part in parts for r in part["runs"]], name)
        return 0

    if args.quick:
        base = dict(peers=args.peers or 12, rounds=args.rounds or 5, topology="regular:4")
        base |= dict(local_epochs=0.5)
        target = args.target or 0.6
    else:
        base = dict(peers=args.peers or 100, rounds=args.rounds or 30, topology="regular:8")
        target = args.target or 0.7
    if args.local_epochs:
        base["local_epochs"] = args.local_epochs
    evaluated = 1000 if args.quick else 2000
    base |= dict(dataset="fashion-mnist", model=args.model, seed=args.seed, eval_samples=evaluated)
    specs = args.specs.split(",") if args.specs else QUICK_SPECS if args.quick else SPECS
    if "none" not in specs:
        specs = ["none", *specs]
    partitions = args.partitions.split(",")
    settings: dict[str, Any] = base | {
        "target": target,
        "partitions": partitions,
        "specs": specs,
        "model": args.model,
    }
    runs: list[dict[str, Any]] = []

    def run(part: str, protocol: str, spec: str, **options: Any) -> None:
        config = make_config(**base, partition=part, protocol=protocol, compression=spec, **options)
        started = time.perf_counter()
        result = simulate(config)
        reached = first_reaching(result.metrics, target)
        entry = {
            "partition": part,
            "protocol": protocol,
            "spec": spec,
            "final_accuracy": result.summary["mean_accuracy"],
            "rounds_to_target": reached["round"] if reached else None,
            "bytes_to_target": reached["bytes_sent"] if reached else None,
            "bytes_sent": result.summary["bytes_sent"],
            "messages_rejected": result.summary["messages_rejected"],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "metrics": result.metrics,
        }
        runs.append(entry)
        _write(settings, runs, name)  # a partial result survives an interrupted run
        console.print(
            f"{part:<14} {protocol:<7} {spec:<16} final {entry['final_accuracy']:.4f}  "
            f"{entry['bytes_sent'] / 1e6:9.1f} MB  to {target}: round "
            f"{entry['rounds_to_target']}  ({entry['wall_seconds']} s)"
        )

    if args.modest_only:
        specs = ["none", args.modest_only]
    else:
        for part in partitions:
            for spec in specs:
                run(part, "gossip", spec, aggregator="vc")
    settings["best"] = best = args.modest_only or best_spec(runs, specs)
    if not args.no_modest:
        for part in partitions:
            for spec in dict.fromkeys(["none", best]):
                run(part, "modest", spec)
    report(console, settings, runs, name)
    return 0


def _write(settings: dict[str, Any], runs: list[dict[str, Any]], name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    payload = {"settings": settings, "runs": runs}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")


def report(
    console: Console, settings: dict[str, Any], runs: list[dict[str, Any]], name: str
) -> None:
    """Print the table; write the JSON and the plot."""
    target = settings["target"]
    add_ratios(runs, target)
    title = (
        f"Fashion-MNIST, {settings['peers']} peers, {settings['topology']}, {settings['model']}, "
        f"{settings['rounds']} rounds, seed {settings['seed']}; x fewer bytes than none"
    )
    table = Table(title=title)
    columns = (
        "partition",
        "protocol",
        "compression",
        "final acc",
        "Δ points",
        f"MB to {target}",
        f"x fewer to {target}",
        "MB in all",
        "x fewer in all",
    )
    for column in columns:
        table.add_column(column)
    for entry in runs:
        table.add_row(*row(entry))
    console.print(table)
    console.print(f"best spec (for MoDeST): {settings.get('best')}")
    console.print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for entry in runs:
        console.print("| " + " | ".join(row(entry)) + " |", soft_wrap=True)
    _write(settings, runs, name)
    plot(runs, settings["partitions"], RESULTS / f"{name}.png", target)
    console.print(f"wrote {RESULTS / name}.json and .png")


def best_spec(runs: list[dict[str, Any]], specs: list[str]) -> str:
    """The compressed spec with the fewest bytes in all among those within 1 point of
    none's final accuracy on every partition; else the one that loses least."""

    def worst_loss(spec: str) -> float:
        losses = []
        for entry in runs:
            if entry["spec"] == spec:
                plain = _baseline(runs, entry)
                losses.append(plain["final_accuracy"] - entry["final_accuracy"])
        return max(losses)

    def total(spec: str) -> int:
        return sum(e["bytes_sent"] for e in runs if e["spec"] == spec)

    candidates = [s for s in specs if s != "none"]
    if not candidates:
        return "none"
    within = [s for s in candidates if worst_loss(s) <= 0.01]
    return min(within, key=total) if within else min(candidates, key=worst_loss)


def _baseline(runs: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any]:
    return next(
        r
        for r in runs
        if r["spec"] == "none"
        and r["partition"] == entry["partition"]
        and r["protocol"] == entry["protocol"]
    )


def add_ratios(runs: list[dict[str, Any]], target: float) -> None:
    for entry in runs:  # to target: from the metrics, so that a combine can set another
        reached = first_reaching(entry["metrics"], target)
        entry["rounds_to_target"] = reached["round"] if reached else None
        entry["bytes_to_target"] = reached["bytes_sent"] if reached else None
    for entry in runs:
        plain = _baseline(runs, entry)
        entry["accuracy_change_points"] = 100 * (entry["final_accuracy"] - plain["final_accuracy"])
        entry["fewer_bytes"] = plain["bytes_sent"] / entry["bytes_sent"]
        mine, theirs = entry["bytes_to_target"], plain["bytes_to_target"]
        entry["fewer_bytes_to_target"] = theirs / mine if mine and theirs else None


def row(entry: dict[str, Any]) -> list[str]:
    to_target = entry["bytes_to_target"]
    ratio = entry["fewer_bytes_to_target"]
    return [
        entry["partition"],
        entry["protocol"],
        entry["spec"],
        f"{entry['final_accuracy']:.3f}",
        f"{entry['accuracy_change_points']:+.1f}",
        f"{to_target / 1e6:.0f}" if to_target else "never",
        f"{ratio:.1f}" if ratio else "-",
        f"{entry['bytes_sent'] / 1e6:.0f}",
        f"{entry['fewer_bytes']:.1f}",
    ]


def plot(runs: list[dict[str, Any]], partitions: list[str], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(partitions), figsize=(6 * len(partitions), 4.2), dpi=120, sharey=True, squeeze=False
    )
    for ax, part in zip(axes[0], partitions, strict=True):
        for entry in (r for r in runs if r["partition"] == part):
            megabytes = [m["bytes_sent"] / 1e6 for m in entry["metrics"]]
            accuracy = [m["mean_accuracy"] for m in entry["metrics"]]
            style = "--" if entry["protocol"] == "modest" else "-"
            label = f"{entry['protocol']} {entry['spec']}"
            ax.plot(megabytes, accuracy, style, label=label, lw=1.8)
        ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_title(f"Fashion-MNIST {part}")
        ax.set_xlabel("MB sent by all peers (log)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean test accuracy of the peers")
    axes[0][0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
