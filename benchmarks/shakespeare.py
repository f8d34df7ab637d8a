"""Next-character prediction on Shakespeare, one speaker per peer: gossip with VC, gossip
with the plain mean, and FedAvg.

Each peer holds one (play, speaker) role's lines (``--partition natural``, as LEAF splits
the task) and trains ``charlstm`` from its own initialisation; every method runs on the
same seed, speakers, topology and test samples (drawn from all 617 kept roles' held-out
text). The table gives the final mean accuracy of the peers, the best round, and the
bytes sent; the plot shows accuracy against rounds and against bytes.

    python benchmarks/shakespeare.py            # 16 speakers, regular:4, 30 rounds
    python benchmarks/shakespeare.py --quick    # 8 speakers, 5 rounds, about a minute
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
METHODS = {
    "gossip-vc": {"protocol": "gossip", "aggregator": "vc"},
    "gossip-mean": {"protocol": "gossip", "aggregator": "mean"},
    "fedavg": {"protocol": "fedavg"},
}
#: The fraction of next characters that are spaces among all test samples: the accuracy of
#: always answering the most common character, which a model must beat to have learnt.
SPACE_SHARE = 0.186


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run, about a minute")
    parser.add_argument("--peers", type=int, help="speakers, one per peer (default 16)")
    parser.add_argument("--rounds", type=int, help="rounds (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    quick = args.quick
    base: dict[str, Any] = dict(
        peers=args.peers or (8 if quick else 16),
        rounds=args.rounds or (5 if quick else 30),
        topology="regular:4",
        dataset="shakespeare",
        partition="natural",
        model="charlstm",
        lr=0.1,
        eval_samples=200 if quick else 500,
        seed=args.seed,
    )

    console = Console(highlight=False)
    runs: list[dict[str, Any]] = []
    for method, options in METHODS.items():
        started = time.perf_counter()
        result = simulate(make_config(**base, **options))
        best = max(result.metrics, key=lambda m: m["mean_accuracy"])
        run = {
            "method": method,
            "final_accuracy": result.summary["mean_accuracy"],
            "best_accuracy": best["mean_accuracy"],
            "best_round": best["round"],
            "bytes_sent": result.summary["bytes_sent"],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "metrics": result.metrics,
        }
        runs.append(run)
        console.print(
            f"{method:<12} final {run['final_accuracy']:.4f}  best {run['best_accuracy']:.4f} "
            f"(round {run['best_round']})  {run['bytes_sent'] / 1e6:.0f} MB  "
            f"({run['wall_seconds']} s)"
        )

    table = Table(
        title=f"Shakespeare by speaker, {base['peers']} speakers (one per peer), "
        f"{base['topology']}, charlstm, independent inits, {base['rounds']} rounds, "
        f"seed {args.seed}"
    )
    for column in ("method", "final acc", "best acc (round)", "MB sent", "wall s"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run["method"],
            f"{run['final_accuracy']:.3f}",
            f"{run['best_accuracy']:.3f} ({run['best_round']})",
            f"{run['bytes_sent'] / 1e6:.0f}",
            f"{run['wall_seconds']:.0f}",
        )
    console.print(table)
    console.print(f"always answering a space scores {SPACE_SHARE}")

    RESULTS.mkdir(exist_ok=True)
    name = "shakespeare_quick" if quick else "shakespeare"
    if args.peers or args.rounds:  # keep the default run's files
        name += f"_{base['peers']}x{base['rounds']}"
    payload = {"settings": base | {"space_share": SPACE_SHARE}, "runs": runs}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot(runs, base, RESULTS / f"{name}.png")
    console.print(f"wrote {RESULTS / name}.json and .png")
    return 0


def plot(runs: list[dict[str, Any]], base: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.2), dpi=120, sharey=True)
    for run in runs:
        accuracy = [m["mean_accuracy"] for m in run["metrics"]]
        by_round.plot([m["round"] for m in run["metrics"]], accuracy, label=run["method"], lw=2)
        mb = [m["bytes_sent"] / 1e6 for m in run["metrics"]]
        by_bytes.plot(mb, accuracy, label=run["method"], lw=2)
    for ax, label in ((by_round, "round"), (by_bytes, "MB sent, all peers")):
        ax.axhline(SPACE_SHARE, color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    by_round.set_title(f"Shakespeare, {base['peers']} speakers, charlstm")
    by_bytes.set_title("the same runs against traffic")
    by_round.set_ylabel("mean next-character accuracy of the peers")
    by_round.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
