"""Real peer processes over libp2p on 127.0.0.1: learning, crashes and restarts.

Each test starts its own processes and stops them itself, bounded in time."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gossiplearn import make_config
from gossiplearn.cli import main
from gossiplearn.launcher import Launcher

pytestmark = [pytest.mark.network, pytest.mark.slow]


def rounds_done(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["round"] if lines else 0


async def wait_for_round(launcher: Launcher, indices: list[int], round_: int) -> None:
    while min(rounds_done(launcher.peers[i].folder) for i in indices) < round_:
        await asyncio.sleep(0.1)


async def test_five_processes_learn_and_survive_a_sigkill(tmp_path: Path) -> None:
    config = make_config(peers=5, rounds=25, topology="ring", seed=1, merge_timeout=3.0)
    launcher = Launcher(config, tmp_path)
    try:
        async with asyncio.timeout(240):
            await launcher.start()
            await wait_for_round(launcher, [0, 1, 2, 3, 4], 3)
            launcher.kill(2)  # a crash mid-run
            assert await launcher.wait(180)
    finally:
        await launcher.stop()
    summary = launcher.gather()
    assert summary["peers_killed"] == [2]
    assert summary["peers_finished"] == 4  # the other four trained to the end
    assert summary["rounds"] == 25
    assert summary["mean_accuracy"] >= 0.80
    assert (tmp_path / "accuracy.png").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["round"] == 25 and metrics[-1]["peers_reporting"] == 4


async def test_restarted_peer_resumes_with_same_identity_and_state(tmp_path: Path) -> None:
    config = make_config(peers=3, rounds=40, topology="complete", seed=2, merge_timeout=3.0)
    launcher = Launcher(config, tmp_path)
    try:
        async with asyncio.timeout(240):
            await launcher.start()
            folder = launcher.peers[1].folder
            await wait_for_round(launcher, [1], 4)
            launcher.kill(1)
            await launcher.peers[1].process.wait()
            before = rounds_done(folder)
            await launcher.spawn(1)  # same identity file, same state dir
            assert await launcher.wait(180)
    finally:
        await launcher.stop()
    output = (folder / "output.log").read_text()
    ids = [line.split()[-1] for line in output.splitlines() if line.startswith("peer id")]
    assert len(ids) == 2 and ids[0] == ids[1]  # the same identity after the restart
    metrics = (folder / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(line)["round"] for line in metrics]
    assert before >= 4 and rounds[-1] == 40
    # Resumed from its checkpoint: round 1 was never run a second time.
    assert rounds.count(1) == 1
    first_after_restart = rounds[before] if len(rounds) > before else None
    assert first_after_restart is not None and first_after_restart >= before


async def test_modest_processes_keep_completing_rounds_after_half_are_killed(
    tmp_path: Path,
) -> None:
    config = make_config(
        protocol="modest", peers=10, rounds=16, sample_size=3, model="logreg", seed=3,
        ping_timeout=0.5, inactivity_threshold=4, aggregation_timeout=3.0,
    )  # fmt: skip
    launcher = Launcher(config, tmp_path)
    try:
        async with asyncio.timeout(300):
            await launcher.start()
            while launcher.last_round() < 4:
                await asyncio.sleep(0.1)
            killed_at = launcher.last_round()
            for index in range(5):
                launcher.kill(index)
            assert await launcher.wait_done(240)
    finally:
        await launcher.stop()
    summary = launcher.gather()
    assert summary["peers_killed"] == [0, 1, 2, 3, 4]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rounds = [line["round"] for line in metrics]
    assert max(rounds) == 16 and len([r for r in rounds if r > killed_at + 1]) >= 8
    # Every round after the crash was completed by the five survivors.
    survivors = {launcher.peers[i].folder for i in range(5, 10)}
    late = {
        folder
        for folder in survivors
        for line in (folder / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["round"] > killed_at + 1
    }
    assert late


def test_dpsgd_processes_learn_with_max_degree_weights(tmp_path: Path) -> None:
    # 5 processes on a ring (2 neighbours each, weight 1/3 each); 20 synchronous rounds.
    args = ["launch", "--protocol", "dpsgd", "--peers", "5", "--topology", "ring"]
    args += ["--rounds", "20", "--merge-timeout", "3", "--seed", "1", "--timeout", "240"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["protocol"] == "dpsgd"
    assert summary["peers_finished"] == 5 and summary["rounds"] == 20
    assert summary["mean_accuracy"] >= 0.80, summary["mean_accuracy"]


# Measured with `gossiplearn simulate` (10 peers, regular:4, digits dirichlet:0.5, logreg,
# 5 local steps, no clipping, seed 4, one label-flip 0->1 attacker with 5 identities, 30
# rounds): sybilwall accuracy 0.911, attack success 0.0; mean 0.699, attack success 0.62.
SYBIL_ATTACK = dict(
    peers=10, rounds=30, topology="regular:4", model="logreg", partition="dirichlet:0.5",
    attack="label-flip:0:1", attackers=1, sybils=5, local_steps=5, seed=4, clip=False,
    merge_timeout=5.0,
)  # fmt: skip


async def launch_attacked(out: Path, aggregator: str) -> dict[str, Any]:
    config = make_config(**SYBIL_ATTACK, aggregator=aggregator)
    # Eleven processes start on a crowded machine: generous start and handshake times.
    launcher = Launcher(config, out, start_timeout=600, open_timeout=15.0)
    try:
        async with asyncio.timeout(1200):
            await launcher.start()
            assert await launcher.wait_done(900)
    finally:
        await launcher.stop()
    return launcher.gather()


@pytest.mark.parametrize("aggregator", ["sybilwall", "mean"])
async def test_one_process_with_five_sybil_identities_against_sybilwall_and_mean(
    tmp_path: Path, aggregator: str
) -> None:
    summary = await launch_attacked(tmp_path, aggregator)
    keys = ("mean_accuracy", "attack_success_rate", "attacker_weight", "wall_seconds")
    print(aggregator, {key: summary.get(key) for key in keys})
    attacker, sybils = summary["attackers"], summary["sybils"]
    assert len(attacker) == 1 and len(sybils) == 4  # identities 10..13, one process
    roster = json.loads((tmp_path / "roster.json").read_text())
    assert len(roster) == 14 and len(set(roster)) == 14
    # Honest peers took the identities attached to them as neighbours (regular:4 gives
    # each 4 honest ones), and measured the weight they gave them.
    most = max(
        line["neighbours"]
        for i in range(10)
        if i not in attacker
        for line in map(json.loads, (tmp_path / f"peer-{i}/metrics.jsonl").read_text().splitlines())
    )
    assert most > 4 and summary["attacker_weight"] is not None
    # the attacker runs until launch stops it: the nine honest peers finished
    assert summary["rounds"] == 30 and summary["peers_finished"] == 9
    if aggregator == "sybilwall":
        assert summary["attack_success_rate"] < 0.15
        assert summary["mean_accuracy"] >= 0.8
    else:
        assert summary["attack_success_rate"] >= 0.3  # the attack clearly succeeds
        assert summary["attacker_weight"] > 0.1
