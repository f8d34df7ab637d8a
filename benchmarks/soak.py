"""Soak test: 10 real peer processes, a random SIGKILL and restart every minute.

Ten ``gossiplearn peer`` processes (libp2p on 127.0.0.1, logistic regression on digits, a
random 4-regular graph) run for 20 minutes. Every minute one random peer is killed with
SIGKILL and restarted a few seconds later with the same identity and state folder, so it
resumes from its last checkpoint. Every few seconds the RSS of each peer process is read
from /proc. Reported: rounds completed, restarts survived (the peer resumed from its
checkpoint and went on past the round it was killed in), the peak RSS of each peer per
minute and the slope of a line fitted to it (flat, not growing), and messages rejected.

    python benchmarks/soak.py            # 20 minutes
    python benchmarks/soak.py --quick    # about 90 seconds

The peer processes run at a lower CPU priority (nice), so that other work on the machine
is served first (``--cpus N`` also pins them to N CPUs once started); rounds completed
therefore depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gossiplearn import make_config
from gossiplearn.launcher import Launcher

RESULTS = Path(__file__).parent / "results"
RUNS = Path(__file__).parent.parent / "runs"


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def rounds_of(folder: Path) -> list[int]:
    """Rounds a peer reported, in order, over all its lives (metrics.jsonl is appended)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rounds = []
    for line in path.read_text().splitlines():
        try:
            rounds.append(int(json.loads(line)["round"]))
        except (json.JSONDecodeError, KeyError, ValueError):
            continue  # a line cut short by SIGKILL
    return rounds


def rejected_in_logs(folder: Path) -> int:
    """Messages the peer rejected over all its lives, from the warnings in its log."""
    path = folder / "output.log"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if "rejected a" in line)


def pin(pid: int, cpus: int) -> None:
    """Keep process ``pid`` on the last ``cpus`` CPUs of the machine (0: anywhere)."""
    available = sorted(os.sched_getaffinity(0))
    if cpus <= 0 or cpus >= len(available):
        return
    with contextlib.suppress(OSError):  # it may have exited already
        os.sched_setaffinity(pid, available[-cpus:])


def slope_per_minute(times: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (seconds), in units per minute."""
    if len(times) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times) / 60.0, np.asarray(values), 1)[0])


async def soak(args: argparse.Namespace, out: Path, console: Console) -> dict[str, Any]:
    config = make_config(
        peers=args.peers,
        rounds=1_000_000,  # run until stopped
        dataset="digits",
        model="logreg",
        topology="regular:4",
        merge_timeout=5.0,
        eval_every=5,
        seed=args.seed,
    )
    launcher = Launcher(config, out)
    rng = random.Random(args.seed)
    samples: list[dict[str, Any]] = []  # {"t", "peer", "rss_mb", "life"}
    kills: list[dict[str, Any]] = []
    lives = [0] * args.peers
    await launcher.start()
    for peer in launcher.peers:
        pin(peer.process.pid, args.cpus)
    started = time.monotonic()
    next_kill = started + args.kill_every
    next_sample = started
    restarts: set[asyncio.Task[None]] = set()

    async def restart(index: int, kill: dict[str, Any]) -> None:
        launcher.kill(index, signal.SIGKILL)
        await launcher.peers[index].process.wait()
        await asyncio.sleep(args.downtime)
        spawned = time.monotonic()
        await launcher.spawn(index)
        lives[index] += 1
        try:
            await asyncio.wait_for(launcher.peers[index].address, args.start_timeout)
        except Exception as error:  # a timeout or a LaunchError: recorded, the run goes on
            kill["restart_error"] = f"{type(error).__name__}: {error}"[:300]
            console.print(f"peer {index} did not come back: {kill['restart_error']}")
            return
        pin(launcher.peers[index].process.pid, args.cpus)
        kill["seconds_to_listen"] = round(time.monotonic() - spawned, 1)

    try:
        while (now := time.monotonic()) < started + args.duration:
            if now >= next_sample:
                for peer in launcher.peers:
                    rss = rss_mb(peer.process.pid) if peer.process.returncode is None else None
                    if rss is not None:
                        samples.append(
                            {"t": round(now - started, 2), "peer": peer.index, "rss_mb": rss,
                             "life": lives[peer.index]}
                        )  # fmt: skip
                next_sample += args.sample_every
            settled = {"seconds_to_listen", "restart_error"}
            busy = {k["peer"] for k in kills if not settled & k.keys()}  # still restarting
            if now >= next_kill and now + args.downtime + 5 < started + args.duration:
                index = rng.choice([i for i in range(args.peers) if i not in busy])
                before = rounds_of(launcher.peers[index].folder)
                kill = {
                    "t": round(now - started, 1),
                    "peer": index,
                    "round_at_kill": max(before, default=0),
                    "reports_before": len(before),
                }
                kills.append(kill)
                console.print(
                    f"[{kill['t']:>6.0f} s] SIGKILL peer {index} at round "
                    f"{kill['round_at_kill']}; restarting"
                )
                task = asyncio.create_task(restart(index, kill))
                restarts.add(task)
                task.add_done_callback(restarts.discard)
                next_kill += args.kill_every
            await asyncio.sleep(0.2)
        await asyncio.gather(*restarts, return_exceptions=True)
    finally:
        await launcher.stop()
    summary = launcher.gather()
    return analyse(args, launcher, samples, kills, summary)


def analyse(
    args: argparse.Namespace,
    launcher: Launcher,
    samples: list[dict[str, Any]],
    kills: list[dict[str, Any]],
    summary: dict[str, Any],
) -> dict[str, Any]:
    peers = []
    for peer in launcher.peers:
        mine = [s for s in samples if s["peer"] == peer.index]
        minutes = int(args.duration // args.window) + 1
        peaks: list[float | None] = []
        for m in range(minutes):
            start, end = m * args.window, (m + 1) * args.window
            window = [s["rss_mb"] for s in mine if start <= s["t"] < end]
            peaks.append(round(max(window), 1) if window else None)
        # The longest uninterrupted life shows a leak best: a restart resets the RSS.
        by_life: dict[int, list[dict[str, Any]]] = {}
        for s in mine:
            by_life.setdefault(s["life"], []).append(s)
        longest = max(by_life.values(), key=lambda life: life[-1]["t"] - life[0]["t"])
        # Skip the first minute of a life: imports and the first rounds grow it on purpose.
        settled = [s for s in longest if s["t"] - longest[0]["t"] >= 60]
        slope = None
        if len(settled) >= 2 and settled[-1]["t"] - settled[0]["t"] >= args.window:
            times = [s["t"] for s in settled]
            slope = round(slope_per_minute(times, [s["rss_mb"] for s in settled]), 3)
        rounds = rounds_of(peer.folder)
        peers.append(
            {
                "peer": peer.index,
                "restarts": sum(1 for k in kills if k["peer"] == peer.index),
                "max_round": max(rounds, default=0),
                "round_reports": len(rounds),
                "rejected_logged": rejected_in_logs(peer.folder),
                "peak_rss_mb_per_window": peaks,
                "peak_rss_mb": round(max(s["rss_mb"] for s in mine), 1),
                "longest_life_s": round(longest[-1]["t"] - longest[0]["t"], 1),
                "rss_slope_mb_per_min": slope,
            }
        )
    for kill in kills:
        rounds = rounds_of(launcher.peers[kill["peer"]].folder)
        after = rounds[kill["reports_before"] :]
        # Resumed: its first round after the restart follows its checkpoint, not round 1.
        kill["first_round_after"] = after[0] if after else None
        kill["resumed"] = bool(after) and (kill["round_at_kill"] < 2 or after[0] > 1)
        kill["survived"] = bool(after) and max(after) > kill["round_at_kill"]
        kill["restarted"] = "seconds_to_listen" in kill
    window_peaks = [
        [p["peak_rss_mb_per_window"][m] for p in peers if p["peak_rss_mb_per_window"][m]]
        for m in range(len(peers[0]["peak_rss_mb_per_window"]))
    ]
    mean_peaks = [float(np.mean(w)) if w else None for w in window_peaks]
    slopes = [p["rss_slope_mb_per_min"] for p in peers if p["rss_slope_mb_per_min"] is not None]
    return {
        "settings": {
            "peers": args.peers,
            "duration_s": args.duration,
            "kill_every_s": args.kill_every,
            "downtime_s": args.downtime,
            "sample_every_s": args.sample_every,
            "window_s": args.window,
            "seed": args.seed,
            "model": "logreg",
            "dataset": "digits",
            "topology": "regular:4",
        },
        "rounds_completed": sum(p["max_round"] for p in peers),
        "min_round": min(p["max_round"] for p in peers),
        "max_round": max(p["max_round"] for p in peers),
        "restarts": len(kills),
        "restarts_survived": sum(1 for k in kills if k["survived"]),
        "restarts_resumed": sum(1 for k in kills if k["resumed"]),
        "messages_rejected_logged": sum(p["rejected_logged"] for p in peers),
        "messages_rejected_at_end": summary.get("messages_rejected", {}),
        "mean_accuracy_at_end": summary.get("mean_accuracy"),
        "mean_peak_rss_mb_per_window": [None if v is None else round(v, 1) for v in mean_peaks],
        # A leak shows as growth within a life (a restart resets the RSS): the median over
        # peers of the slope over each one's longest life, its first minute left out.
        "rss_slope_mb_per_min_median": round(float(np.median(slopes)), 3) if slopes else None,
        "rss_slope_mb_per_min_max": round(max(slopes), 3) if slopes else None,
        "peers": peers,
        "kills": kills,
        "samples": samples,
    }


def print_tables(console: Console, result: dict[str, Any]) -> None:
    s = result["settings"]
    console.print(
        f"\n{s['peers']} peers, {s['duration_s'] / 60:.1f} min, SIGKILL + restart every "
        f"{s['kill_every_s']} s; rounds completed {result['rounds_completed']} "
        f"(per peer {result['min_round']}..{result['max_round']}); restarts survived "
        f"{result['restarts_survived']}/{result['restarts']} (resumed from checkpoint: "
        f"{result['restarts_resumed']}); messages rejected {result['messages_rejected_logged']}; "
        f"RSS slope within a life: median {_signed(result['rss_slope_mb_per_min_median'])}, "
        f"max {_signed(result['rss_slope_mb_per_min_max'])} MB/min"
    )
    table = Table("peer", "restarts", "max round", "peak RSS MB", "RSS per window (first → last)",
                  "slope MB/min (longest life)", "rejected")  # fmt: skip
    for p in result["peers"]:
        windows = [w for w in p["peak_rss_mb_per_window"] if w is not None]
        table.add_row(
            str(p["peer"]),
            str(p["restarts"]),
            str(p["max_round"]),
            f"{p['peak_rss_mb']:.0f}",
            f"{windows[0]:.0f} → {windows[-1]:.0f}" if windows else "-",
            f"{_signed(p['rss_slope_mb_per_min'])} ({p['longest_life_s'] / 60:.1f} min)",
            str(p["rejected_logged"]),
        )
    console.print(table)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for peer in range(result["settings"]["peers"]):
        mine = [s for s in result["samples"] if s["peer"] == peer]
        lives = sorted({s["life"] for s in mine})
        for life in lives:
            points = [s for s in mine if s["life"] == life]
            ax.plot(
                [s["t"] / 60 for s in points],
                [s["rss_mb"] for s in points],
                color=f"C{peer % 10}",
                linewidth=1,
                label=f"peer {peer}" if life == lives[0] else None,
            )
    for kill in result["kills"]:
        ax.axvline(kill["t"] / 60, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("minutes (dotted: a SIGKILL and restart)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("Soak: RSS of each peer process")
    ax.legend(fontsize=7, ncol=5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about 90 seconds")
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--duration", type=float, help="seconds (default 1200; quick 90)")
    parser.add_argument("--kill-every", type=float, help="seconds (default 60; quick 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nice", type=int, default=10, help="CPU niceness of the peers")
    parser.add_argument("--cpus", type=int, default=0, help="pin the peers to N CPUs (0: all)")
    args = parser.parse_args()
    args.duration = args.duration or (90.0 if args.quick else 1200.0)
    args.kill_every = args.kill_every or (20.0 if args.quick else 60.0)
    args.downtime = 3.0
    args.start_timeout = 300.0
    args.sample_every = 2.0 if args.quick else 5.0
    args.window = 15.0 if args.quick else 60.0
    os.nice(args.nice)  # inherited by every peer process

    name = "soak_quick" if args.quick else "soak"
    out = RUNS / name
    shutil.rmtree(out, ignore_errors=True)
    console = Console(highlight=False, width=140)
    result = asyncio.run(soak(args, out, console))
    print_tables(console, result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / f"{name}.png")
    console.print(f"wrote {RESULTS / name}.json and {name}.png (peer folders in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
