"""MoDeST against D-PSGD, gossip learning (VC) and FedAvg, and MoDeST when 80% crash.

Fashion-MNIST split with dirichlet:0.3, the mlp model, one shared initial model for every
method (MoDeST always starts from one; the others get it too, to compare like with like).
MoDeST samples s peers a round with one aggregator; FedAvg samples the same fraction s/n,
so both train the same number of peers per round. D-PSGD runs on the exponential graph
(the paper's baseline; here the static graph, all its edges every round), gossip with VC
on a random regular graph. The table gives final accuracy, rounds, bytes and virtual
seconds to the target accuracy, and the bytes D-PSGD needs per byte MoDeST needs. The churn
part crashes 80% of the peers at once halfway (MoDeST and D-PSGD).

    python benchmarks/modest.py            # 100 peers, 50 rounds (roughly 10-20 minutes)
    python benchmarks/modest.py --quick    # 24 peers, 10 rounds, about a minute
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


def methods(peers: int, sample_size: int, quick: bool) -> dict[str, dict[str, Any]]:
    return {
        "modest": {"protocol": "modest", "sample_size": sample_size, "aggregators": 1},
        "dpsgd": {"protocol": "dpsgd", "topology": "exponential"},
        "gossip-vc": {
            "protocol": "gossip",
            "aggregator": "vc",
            "topology": "regular:4" if quick else "regular:8",
        },
        "fedavg": {"protocol": "fedavg", "sample_fraction": sample_size / peers},
    }


def first_reaching(metrics: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((m for m in metrics if m["mean_accuracy"] >= target), None)


def run(name: str, settings: dict[str, Any], target: float, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    result = simulate(make_config(**settings))
    reached = first_reaching(result.metrics, target)
    entry = {
        "method": name,
        "final_accuracy": result.summary["mean_accuracy"],
        "rounds": result.summary["rounds"],
        "rounds_to_target": reached["round"] if reached else None,
        "bytes_to_target": reached["bytes_sent"] if reached else None,
        "time_to_target": reached["time"] if reached else None,
        "bytes_sent": result.summary["bytes_sent"],
        "messages_sent": result.summary["messages_sent"],
        "virtual_time": result.summary["virtual_time"],
        "churn": result.summary["timeline"],  # what the churn did (the summary's timeline)
        "wall_seconds": round(time.perf_counter() - started, 1),
        "metrics": result.metrics,
    }
    console.print(
        f"{name:<14} final {entry['final_accuracy']:.4f}  to {target}: "
        f"round {entry['rounds_to_target']}  {entry['bytes_sent'] / 1e9:.3f} GB sent  "
        f"({entry['wall_seconds']} s)"
    )
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down run, < 2 minutes")
    parser.add_argument("--peers", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--target", type=float)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    peers = args.peers or (24 if args.quick else 100)
    rounds = args.rounds or (10 if args.quick else 50)
    target = args.target or (0.65 if args.quick else 0.7)
    sample_size = max(2, peers // 10) if not args.quick else 5
    base: dict[str, Any] = dict(
        peers=peers,
        rounds=rounds,
        dataset="fashion-mnist",
        partition="dirichlet:0.3",
        model=args.model,
        seed=args.seed,
        shared_init=True,
        eval_samples=1000 if args.quick else 2000,
    )
    if args.quick:
        base |= dict(local_epochs=0.5)
    console = Console(highlight=False, width=120)

    runs = [
        run(name, base | options, target, console)
        for name, options in methods(peers, sample_size, args.quick).items()
    ]
    crash_round = rounds // 2
    crash = [{"kind": "crash", "at_round": crash_round, "amount": 0.8}]
    churn_runs = [
        run(f"{name}+crash", base | options | {"churn": crash}, target, console)
        for name, options in methods(peers, sample_size, args.quick).items()
        if name in ("modest", "dpsgd")
    ]

    by_name = {r["method"]: r for r in runs}
    modest, dpsgd = by_name["modest"], by_name["dpsgd"]
    ratios = {
        "dpsgd_over_modest_bytes_total": dpsgd["bytes_sent"] / modest["bytes_sent"],
        "dpsgd_over_modest_bytes_to_target": (
            dpsgd["bytes_to_target"] / modest["bytes_to_target"]
            if dpsgd["bytes_to_target"] and modest["bytes_to_target"]
            else None
        ),
    }
    print_tables(console, runs, churn_runs, ratios, base, target, sample_size, crash_round)

    RESULTS.mkdir(exist_ok=True)
    name = "modest_quick" if args.quick else "modest"
    payload = {
        "settings": base | {"target": target, "sample_size": sample_size, "crash": crash},
        "runs": runs,
        "churn_runs": churn_runs,
        "ratios": ratios,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    plot(runs, RESULTS / f"{name}.png", target, base)
    plot_churn(runs, churn_runs, RESULTS / f"{name}_churn.png", crash_round, base)
    console.print(f"wrote {RESULTS / name}.json, {name}.png and {name}_churn.png")
    return 0


def print_tables(
    console: Console,
    runs: list[dict[str, Any]],
    churn_runs: list[dict[str, Any]],
    ratios: dict[str, float | None],
    base: dict[str, Any],
    target: float,
    sample_size: int,
    crash_round: int,
) -> None:
    table = Table(
        title=f"Fashion-MNIST dirichlet:0.3, {base['peers']} peers, {base['model']}, shared "
        f"init, {base['rounds']} rounds, MoDeST s={sample_size} a=1, seed {base['seed']}"
    )
    for column in ("method", "final acc", f"rounds to {target}", f"GB to {target}",
                   f"virtual s to {target}", "GB total", "wall s"):  # fmt: skip
        table.add_column(column)
    for r in [*runs, *churn_runs]:
        table.add_row(
            r["method"],
            f"{r['final_accuracy']:.3f}",
            str(r["rounds_to_target"] or "never"),
            f"{r['bytes_to_target'] / 1e9:.3f}" if r["bytes_to_target"] else "never",
            f"{r['time_to_target']:.1f}" if r["time_to_target"] else "never",
            f"{r['bytes_sent'] / 1e9:.3f}",
            str(r["wall_seconds"]),
        )
    console.print(table)
    total, to_target = (
        ratios["dpsgd_over_modest_bytes_total"],
        ratios["dpsgd_over_modest_bytes_to_target"],
    )
    console.print(
        f"D-PSGD sends {total:.1f}x the bytes of MoDeST in {base['rounds']} rounds"
        + (f", {to_target:.1f}x to reach {target}" if to_target else "")
    )
    for r in churn_runs:
        acc = {m["round"]: m["mean_accuracy"] for m in r["metrics"]}
        before = acc.get(crash_round)
        console.print(
            f"{r['method']}: 80% crash at round {crash_round} (accuracy "
            f"{before if before is None else round(before, 3)}); {r['rounds']} rounds "
            f"completed, final {r['final_accuracy']:.3f}, virtual {r['virtual_time']:.0f} s"
        )


def _series(run: dict[str, Any], key: str, scale: float = 1.0) -> list[float]:
    return [m[key] * scale for m in run["metrics"]]


def plot(runs: list[dict[str, Any]], path: Path, target: float, base: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), dpi=120, sharey=True)
    for r in runs:
        accuracy = _series(r, "mean_accuracy")
        axes[0].plot(_series(r, "round"), accuracy, label=r["method"], lw=2)
        axes[1].plot(_series(r, "bytes_sent", 1e-9), accuracy, label=r["method"], lw=2)
        axes[2].plot(_series(r, "time"), accuracy, label=r["method"], lw=2)
    for ax, label in zip(axes, ("round", "GB sent (all peers)", "virtual seconds"), strict=True):
        ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy (mean of the reported models)")
    axes[0].legend(loc="lower right")
    fig.suptitle(
        f"Fashion-MNIST dirichlet:0.3, {base['peers']} peers, {base['model']}, shared init"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_churn(
    runs: list[dict[str, Any]],
    churn_runs: list[dict[str, Any]],
    path: Path,
    crash_round: int,
    base: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=120)
    plain = {r["method"]: r for r in runs}
    for r in churn_runs:
        rounds, accuracy = _series(r, "round"), _series(r, "mean_accuracy")
        (curve,) = ax.plot(rounds, accuracy, lw=2, label=r["method"])
        reference = plain[r["method"].removesuffix("+crash")]
        label = f"{reference['method']}, no crash"
        rounds, accuracy = _series(reference, "round"), _series(reference, "mean_accuracy")
        ax.plot(rounds, accuracy, lw=1, ls="--", color=curve.get_color(), label=label)
    ax.axvline(crash_round, color="red", ls=":", lw=1, label="80% of the peers crash")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean of the reported models)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"80% crash at round {crash_round}, {base['peers']} peers, Fashion-MNIST")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
