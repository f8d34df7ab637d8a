"""Scenario timelines in the simulator: recover, partition/heal, attack windows, message
loss and duration; resolution of who an event concerns; and the errors a scenario file
gets (exit 2 naming the file, the key and what is allowed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gossiplearn import make_config, simulate
from gossiplearn.cli import main
from gossiplearn.errors import ConfigError
from gossiplearn.timeline import TimelineEvent, resolve

GOSSIP = dict(peers=12, rounds=12, topology="regular:3", dataset="digits", model="logreg",
              merge_timeout=1.0, eval_samples=400)  # fmt: skip


def event(kind: str, at_round: int, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "at_round": at_round, **fields}


def accuracy_by_round(result: Any) -> dict[int, float]:
    return {m["round"]: m["mean_accuracy"] for m in result.metrics}


def test_crashed_peers_recover_and_report_again() -> None:
    timeline = [event("crash", 3, amount=0.5), event("recover", 6)]
    result = simulate(make_config(**GOSSIP, seed=1, timeline=timeline))
    crash, recover = result.summary["timeline"]
    assert len(crash["peers"]) == 6 and recover["peers"] == crash["peers"]
    assert result.summary["peers_alive"] == 12
    # the recovered peers report again and have a final accuracy
    assert {str(p) for p in crash["peers"]} <= set(result.summary["peer_accuracy"])
    assert result.summary["rounds"] == 12


def test_a_recovered_peer_comes_back_with_its_last_model() -> None:
    # without recovery its round-6 model would have been lost; with it, it trains on from
    # that model: its final accuracy is far above a freshly initialised peer's
    timeline = [event("crash", 6, peers=[0]), event("recover", 8, peers=[0])]
    result = simulate(make_config(**GOSSIP, seed=2, timeline=timeline))
    assert result.summary["peer_accuracy"]["0"] > 0.7


def test_a_partition_cuts_traffic_between_groups_until_healed() -> None:
    groups = [list(range(6)), list(range(6, 12))]
    cut = simulate(make_config(**GOSSIP, seed=3, timeline=[event("partition", 1, groups=groups)]))
    healed = simulate(
        make_config(
            **GOSSIP, seed=3,
            timeline=[event("partition", 1, groups=groups), event("heal", 4)],
        )
    )  # fmt: skip
    whole = simulate(make_config(**GOSSIP, seed=3))
    # fewer messages arrive while split: peers wait out their merge timeout
    assert (
        cut.summary["virtual_time"] > healed.summary["virtual_time"] > whole.summary["virtual_time"]
    )
    assert cut.summary["timeline"][0]["groups"] == groups


def test_partition_into_random_groups_is_decided_by_the_seed() -> None:
    events = [TimelineEvent(kind="partition", at_round=2, groups=3)]
    a = resolve(events, 10, np.random.default_rng(5))[0].groups
    b = resolve(events, 10, np.random.default_rng(5))[0].groups
    assert a == b and len(a) == 3 and sorted(p for g in a for p in g) == list(range(10))


def test_an_attack_window_opens_and_closes() -> None:
    timeline = [event("attack-start", 4), event("attack-stop", 9)]
    config = make_config(
        **GOSSIP | {"rounds": 14}, seed=1, attack="label-flip:0:1", attackers=3, timeline=timeline
    )
    asr = {m["round"]: m["attack_success_rate"] for m in simulate(config).metrics}
    assert max(asr[r] for r in range(1, 5)) < 0.02  # before: honest
    assert max(asr[r] for r in range(6, 11)) > 0.2  # in the window: the flip spreads
    assert asr[14] < 0.05  # after: it washes out


def test_attack_start_can_say_the_attack() -> None:
    timeline = [event("attack-start", 2, attack="sign-flip", peers=[1, 5])]
    config = make_config(**GOSSIP, timeline=timeline)
    assert (config.attack, config.attacker_ids, config.attacker_count()) == ("sign-flip", [1, 5], 2)
    result = simulate(config)
    assert result.summary["attackers"] == [1, 5]
    # a resolved config validates again (the lifted attack is not said twice)
    assert make_config(**config.model_dump()) == config


def test_message_loss_and_duration() -> None:
    lossless = simulate(make_config(**GOSSIP, seed=4))
    lossy = simulate(make_config(**GOSSIP, seed=4, network={"loss": 0.4}))
    assert lossy.summary["virtual_time"] > lossless.summary["virtual_time"]
    short = simulate(make_config(**GOSSIP, seed=4, duration=0.5))
    assert short.summary["virtual_time"] <= 0.5 and short.summary["rounds"] < 12


def test_same_timeline_same_seed_same_summary() -> None:
    timeline = [event("partition", 2, groups=2), event("heal", 4), event("crash", 5, amount=3),
                event("recover", 7, amount=2), event("join", 8, amount=2)]  # fmt: skip
    runs = [simulate(make_config(**GOSSIP, seed=6, timeline=timeline)).summary for _ in (0, 1)]
    for summary in runs:
        summary.pop("wall_seconds")
    assert runs[0] == runs[1]


def test_time_events_fire_at_their_virtual_time() -> None:
    timeline = [{"kind": "crash", "at_time": 0.4, "peers": [3]}]
    result = simulate(make_config(**GOSSIP, timeline=timeline))
    (fired,) = result.summary["timeline"]
    assert fired["time"] == pytest.approx(0.4) and fired["peers"] == [3]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (event("crash", 2, peers=[12]), "peer 12 does not exist (ids 0..11)"),
        (event("recover", 2, peers=[1]), "peers [1] are not crashed"),
        (event("crash", 2, groups=2), "crash takes amount, peers; not groups"),
        (event("partition", 2), "partition needs groups"),
        (event("partition", 2, groups=[[1, 2], [2, 3]]), "overlap"),
        (event("boom", 2), "timeline[0].kind"),
        ({"kind": "crash", "amount": 1}, "exactly one of at_round and at_time"),
        (event("heal", 2, amount=1), "heal takes nothing"),
        (event("attack-stop", 2), "need an attack"),
        (event("join", 2, amount=2.5), "neither a fraction below 1 nor a count"),
    ],
)
def test_bad_events_are_named(bad: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(**GOSSIP, timeline=[bad])
    assert says in str(error.value)


SCENARIO = """\
name = "small"
peers = 8
rounds = 3
topology = "ring"
model = "logreg"
eval_samples = 200
"""


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ("aggregatr = 'vc'\n", ["aggregatr", "unknown setting"]),
        ("rounds = 'many'\n", ["rounds", "integer"]),
        ("topology = 'erdos-renyi:0.01'\n", ["topology", "disconnected"]),
        ("[[timeline]]\nkind = 'crash'\nat_round = 2\npeers = [8]\n",
         ["timeline[0]", "peer 8 does not exist"]),
        ("[[timeline]]\nkind = 'crash'\nat_round = 2\nfraction = 0.5\n",
         ["timeline[0].fraction", "unknown setting"]),
        ("[network]\nlatency = 0.1\n", ["network.latency", "unknown setting"]),
    ],
)  # fmt: skip
def test_scenario_mistakes_exit_2_naming_file_key_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, says: list[str]
) -> None:
    scenario = tmp_path / "bad.toml"
    lines = SCENARIO.splitlines(keepends=True)
    if extra.startswith("rounds") or extra.startswith("topology"):
        lines = [line for line in lines if not line.startswith(extra.split()[0])]
    scenario.write_text("".join(lines) + extra)
    assert main(["simulate", str(scenario), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(scenario) in err
    for text in says:
        assert text in err


def test_simulate_file_with_a_timeline(tmp_path: Path) -> None:
    scenario = tmp_path / "tour.toml"
    scenario.write_text(
        SCENARIO + "[[timeline]]\nkind = 'crash'\nat_round = 1\namount = 2\n"
        "[[timeline]]\nkind = 'recover'\nat_round = 2\n"
    )
    out = tmp_path / "out"
    assert main(["simulate", str(scenario), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["kind"] for e in summary["timeline"]] == ["crash", "recover"]
    assert summary["config"]["name"] == "small"
