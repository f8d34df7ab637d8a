"""A real peer playing its role of a scenario: the role it derives (shard, attacker,
own events), and its timeline on running peers (attack windows, partitions), over the
in-memory transport; ``launch FILE`` with crash, recover and join events over libp2p."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossiplearn import make_config
from gossiplearn.cli import main
from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import load_dataset
from gossiplearn.peer import Peer
from gossiplearn.peer.scenario import (
    AttackPlan,
    TimelineFollower,
    attack_plan,
    own_steps,
    peer_config,
)
from gossiplearn.plan import planned_shard
from gossiplearn.transport.memory import InMemoryNetwork, memory_address

DATA = load_dataset("digits")
TEST = (torch.from_numpy(DATA.test_x), torch.from_numpy(DATA.test_y))


def scenario(**values: Any) -> Any:
    base = dict(peers=6, rounds=8, topology="ring", model="logreg", seed=2, merge_timeout=1.0)
    return make_config(**(base | values))


def test_each_role_derives_its_part_of_the_scenario() -> None:
    timeline = [
        {"kind": "crash", "at_round": 3, "peers": [1]},
        {"kind": "join", "at_round": 4, "amount": 2},
        {"kind": "partition", "at_round": 5, "groups": [[0, 1, 2], [3, 4, 5, 6, 7]]},
        {"kind": "attack-start", "at_round": 2, "attack": "sign-flip", "peers": [4]},
    ]
    config = scenario(timeline=timeline)
    plan = attack_plan(config)
    attackers = plan.attackers
    assert attackers == [4]
    assert peer_config(config, 4, plan).attack == "sign-flip"
    assert peer_config(config, 0, plan).attack is None
    assert peer_config(config, 0, plan).neighbours == 2  # a ring's degree
    kinds = {i: [s.kind for s in own_steps(config, i, attackers)] for i in (0, 1, 4, 7)}
    assert kinds[1] == ["crash", "partition"]
    assert kinds[4] == ["attack-start", "partition"]
    assert kinds[0] == kinds[7] == ["partition"]  # joins are process starts
    # the shards are the simulator's: disjoint, one per initial and joining peer
    shards = [planned_shard(config, DATA, i)[0] for i in range(8)]
    assert sum(len(s) for s in shards) == len(DATA.train_y)
    assert len(np.unique(np.concatenate(shards))) == len(DATA.train_y)


def make_peer(network: InMemoryNetwork, name: str, index: int, **config: Any) -> Peer:
    base = scenario(attack="label-flip:0:1", attackers=1)
    plan = AttackPlan(attackers=[0] if config.pop("attacker", False) else [])
    settings = peer_config(base, index, plan)
    settings = settings.model_copy(update={"min_neighbours": 0, "exchange_interval": 0.2})
    rows, seed = planned_shard(base, DATA, index)
    from gossiplearn.learning.models import build_model

    model = build_model("logreg", DATA.input_shape, DATA.num_classes, seed=seed)
    x, y = torch.from_numpy(DATA.train_x), torch.from_numpy(DATA.train_y)
    shard = torch.from_numpy(rows)
    return Peer(
        model,
        (x[shard], y[shard]),
        TEST,
        settings,
        transport=network.transport(name),
        bootstrap=[memory_address(b) for b in config.get("bootstrap", ())],
    )


async def test_an_attacker_switches_its_attack_with_the_window() -> None:
    config = scenario(
        attack="label-flip:0:1",
        attacker_ids=[0],
        timeline=[
            {"kind": "attack-start", "at_round": 3},
            {"kind": "attack-stop", "at_round": 5},
        ],
    )
    network = InMemoryNetwork()
    attacker = make_peer(network, "a", 0, attacker=True)
    steps = own_steps(config, 0, [0])
    follower = TimelineFollower(attacker, 0, steps, roster=[], clock_origin=0.0, leave=lambda: None)
    clean_y = attacker.learner.y.clone()  # the window is not open yet: clean data
    labels: dict[int, torch.Tensor] = {}
    attacker.on("round", lambda info: labels.setdefault(info["round"], attacker.learner.y))
    async with asyncio.timeout(30), attacker:
        clock = follower.attach()
        while attacker.status().round < 7:
            await asyncio.sleep(0.05)
        clock.cancel()
    assert torch.equal(labels[1], clean_y)  # before the window: clean data
    assert (labels[4] == 0).sum() == 0 and (clean_y == 0).sum() > 0  # 0s flipped to 1
    assert torch.equal(labels[6], clean_y)  # after it: clean again


async def test_a_partition_blocks_the_other_group_until_healed() -> None:
    config = scenario(
        peers=3,
        timeline=[
            {"kind": "partition", "at_round": 2, "groups": [[0, 1], [2]]},
            {"kind": "heal", "at_round": 6},
        ],
    )
    network = InMemoryNetwork()
    peers = [make_peer(network, name, i) for i, name in enumerate("abc")]
    steps = own_steps(config, 0, [])
    follower = TimelineFollower(
        peers[0], 0, steps, roster=["a", "b", "c"], clock_origin=0.0, leave=lambda: None
    )
    blocked: dict[int, set[str]] = {}
    peers[0].on("round", lambda info: blocked.setdefault(info["round"], set(peers[0].blocked)))
    async with asyncio.timeout(30), peers[0], peers[1], peers[2]:
        clock = follower.attach()
        while peers[0].status().round < 7:
            await asyncio.sleep(0.05)
        clock.cancel()
    assert blocked[1] == set()  # before the partition
    assert {"c"} in [blocked.get(r) for r in range(3, 6)]  # during it: c is cut off
    assert peers[0].blocked == set()  # healed


def test_partition_events_need_a_roster() -> None:
    config = scenario(timeline=[{"kind": "partition", "at_round": 2, "groups": 2}])
    peer = make_peer(InMemoryNetwork(), "a", 0)
    with pytest.raises(ConfigError, match="--roster"):
        TimelineFollower(
            peer, 0, own_steps(config, 0, []), roster=[], clock_origin=0.0, leave=lambda: None
        )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--index", "9"], "--index must be one of the scenario's peers: 0..5"),
        (["--index", "1", "--attack", "sign-flip"], "--attack"),
    ],
)
def test_peer_scenario_mistakes_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text("peers = 6\ntopology = 'ring'\nmodel = 'logreg'\n")
    assert main(["peer", "--scenario", str(path), *args]) == 2
    assert says in capsys.readouterr().err


LAUNCH = """\
# crash, recover and join with real processes
peers = 5
rounds = 100  # about a minute: joiners start late on a loaded machine (one process each)
topology = "ring"
model = "logreg"
merge_timeout = 2.0
min_round_seconds = 0.5
seed = 1

[[timeline]]
kind = "crash"
at_round = 3
peers = [2]

[[timeline]]
kind = "join"
at_round = 4
amount = 2

[[timeline]]
kind = "recover"
at_round = 8
"""


@pytest.mark.network
@pytest.mark.slow
def test_launch_plays_crash_recover_and_join_with_real_processes(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(LAUNCH)
    out = tmp_path / "run"
    assert main(["launch", str(path), "--out", str(out), "--timeout", "240"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    events = {e.get("kind", e.get("event")): e for e in summary["timeline"]}
    assert events["crash at round 3"]["peers"] == [2]  # peer 2 killed itself at round 3
    assert events["join"]["peers"] == [5, 6] and events["recover"]["peers"] == [2]
    output = (out / "peer-2" / "output.log").read_text()
    assert output.count("peer id ") == 2  # started twice: the recovery restarted it
    assert summary["peers_finished"] == 7  # the two joiners trained to the end too
    for joiner in (5, 6):
        lines = (out / f"peer-{joiner}" / "metrics.jsonl").read_text().splitlines()
        assert max(json.loads(line)["neighbours"] for line in lines) >= 1  # got connected
    rounds_2 = [
        json.loads(line)["round"]
        for line in (out / "peer-2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert rounds_2[:3] == [1, 2, 3] and rounds_2[3] == 4  # resumed after its round 3


def test_a_dpsgd_role_weighs_neighbours_by_the_topologys_largest_degree() -> None:
    config = scenario(protocol="dpsgd", topology="regular:4")
    settings = peer_config(config, 0, attack_plan(config))
    assert (settings.protocol, settings.neighbours) == ("dpsgd", 4)


def test_attack_plan_numbers_sybils_after_the_peers_and_attaches_them_to_honest_ones() -> None:
    config = scenario(peers=8, topology="regular:4", attack="label-flip:0:1", attackers=1, sybils=4)
    plan = attack_plan(config)
    (attacker,) = plan.attackers
    assert plan.sybils_of(attacker) == [8, 9, 10]  # numbered on from the peers, as simulate
    for sybil, peers in plan.attached.items():
        assert peers and attacker not in peers  # each one attaches to honest peers only
        assert all(sybil in plan.sybils_at(p) for p in peers)
    assert plan.max_degree > 4  # honest peers make room for the identities attached to them
    assert peer_config(config, attacker, plan).sybils == 4
    assert peer_config(config, 0, plan).neighbours == plan.max_degree
