"""``gossiplearn report OUT``: a self-contained HTML page about a finished run.

Accuracy over rounds with the run's timeline events marked, bytes sent, the attack success
rate (targeted attacks), and the spread of the peers' final accuracy. Plots are embedded
as PNG data, so the page is one file that can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from gossiplearn.results import load_run, run_title

REPORT = "report.html"


def _figure_png(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _mark_events(ax: Any, events: list[dict[str, Any]]) -> None:
    """A dashed line per timeline event, at the round the network was at when it fired."""
    for event in events:
        at = event.get("round", event.get("at_round", 0))
        ax.axvline(at, color="crimson", ls="--", lw=1)
        if event.get("groups"):
            label = f"{event['kind']} into {len(event['groups'])}"
        elif event.get("peers"):
            label = f"{event['kind']} {len(event['peers'])}"
        else:
            label = event["kind"]
        ax.annotate(
            label,
            (at, 0.02),
            xycoords=("data", "axes fraction"),
            rotation=90,
            color="crimson",
            fontsize=8,
            ha="right",
        )


def render_report(out: Path) -> Path:
    """Write ``out/report.html`` from the run's summary.json and metrics.jsonl."""
    summary, metrics = load_run(out)
    rounds = [m["round"] for m in metrics]
    events = summary.get("timeline", summary.get("churn", []))
    plots: list[tuple[str, str]] = []

    def accuracy(ax: Any) -> None:
        ax.plot(rounds, [m["mean_accuracy"] for m in metrics], lw=2, label="mean")
        ax.fill_between(
            rounds,
            [m["min_accuracy"] for m in metrics],
            [m["max_accuracy"] for m in metrics],
            alpha=0.2,
            label="min–max over peers",
        )
        _mark_events(ax, events)
        ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1))
        ax.legend(loc="lower right")

    plots.append(("Accuracy (timeline events marked)", _figure_png(accuracy)))

    def traffic(ax: Any) -> None:
        ax.plot(rounds, [m["bytes_sent"] / 1e6 for m in metrics], lw=2)
        _mark_events(ax, events)
        ax.set(xlabel="round", ylabel="MB sent so far (all peers)")

    plots.append(("Bytes sent", _figure_png(traffic)))
    if any("attack_success_rate" in m for m in metrics):

        def attack(ax: Any) -> None:
            ax.plot(rounds, [m.get("attack_success_rate", 0.0) for m in metrics], lw=2, color="C3")
            _mark_events(ax, events)
            ax.set(xlabel="round", ylabel="attack success rate", ylim=(0, 1))

        plots.append(("Attack success rate", _figure_png(attack)))
    finals = list(summary.get("peer_accuracy", {}).values())
    if finals:

        def spread(ax: Any) -> None:
            ax.hist(finals, bins=20, range=(0, 1), color="C2")
            ax.set(xlabel="final test accuracy", ylabel="peers")

        plots.append(("Final accuracy of each peer", _figure_png(spread)))

    path = out / REPORT
    path.write_text(_page(summary, plots))
    return path


def _page(summary: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    keys = ("mean_accuracy", "min_accuracy", "max_accuracy", "attack_success_rate",
            "rounds", "bytes_sent", "messages_sent", "peers_alive", "virtual_time",
            "wall_seconds", "seed")  # fmt: skip
    rows = "".join(
        f"<tr><th>{key}</th><td>{html.escape(_show(summary[key]))}</td></tr>"
        for key in keys
        if summary.get(key) is not None
    )
    figures = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{data}">'
        for title, data in plots
    )
    config = html.escape(json.dumps(summary.get("config", {}), indent=2, sort_keys=True))
    title = html.escape(run_title(summary.get("config", {})))
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>gossiplearn · {title}</title>"
        "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto;color:#222}"
        "th{text-align:left;padding-right:2em}img{max-width:100%}</style>"
        f"<h1>{title}</h1><table>{rows}</table>{figures}"
        f"<h2>Configuration</h2><pre>{config}</pre>"
    )


def _show(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
