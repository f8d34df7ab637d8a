"""Churn in the simulator: crashes, joins and graceful leaves, for MoDeST and gossip; the
recorder's round lines under churn; the churn options of the config and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gossiplearn import make_config, simulate
from gossiplearn.cli import main
from gossiplearn.errors import ConfigError
from gossiplearn.scenarios.recorder import MetricsLine, RoundRecorder
from gossiplearn.types import Params

MODEST = dict(peers=20, dataset="digits", model="logreg", protocol="modest", sample_size=5)
GOSSIP = dict(peers=12, rounds=10, topology="regular:3", dataset="digits", model="logreg")


def churn(kind: str, at_round: int, amount: float) -> dict[str, Any]:
    return {"kind": kind, "at_round": at_round, "amount": amount}


def rounds(result: Any) -> list[int]:
    return [m["round"] for m in result.metrics]


# ---- MoDeST ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_modest_survivors_keep_completing_rounds_after_80_percent_crash(seed: int) -> None:
    config = make_config(**MODEST, rounds=24, seed=seed, churn=[churn("crash", 8, 0.8)])
    result = simulate(config)
    summary = result.summary
    (event,) = summary["timeline"]
    assert event["kind"] == "crash" and len(event["peers"]) == 16
    assert summary["peers_alive"] == 4
    assert rounds(result) == list(range(1, 25))  # every round still completes
    accuracy = {m["round"]: m["mean_accuracy"] for m in result.metrics}
    after = [accuracy[r] for r in range(9, 25)]
    assert max(after[-4:]) > accuracy[8]  # and learning goes on past the crash
    assert np.mean(after[-4:]) > np.mean(after[:4])
    assert summary["mean_accuracy"] > 0.75
    crashed = set(event["peers"])
    assert not crashed & {int(p) for p in summary["peer_accuracy"]}


def test_modest_joining_peers_are_sampled_once_active() -> None:
    config = make_config(**MODEST, rounds=40, seed=2, churn=[churn("join", 5, 0.2)])
    result = simulate(config)
    (event,) = result.summary["timeline"]
    assert event["peers"] == [20, 21, 22, 23]
    assert result.summary["peers_alive"] == 24
    assert rounds(result) == list(range(1, 41))
    trained = [peer for peer in event["peers"] if result.training_jobs.get(peer, 0) > 0]
    assert len(trained) >= 3  # sampled as often as anyone else once known (5/24 per round)


def test_modest_leaving_peers_stop_and_the_rest_go_on() -> None:
    config = make_config(**MODEST, rounds=20, seed=4, churn=[churn("leave", 6, 5)])
    result = simulate(config)
    (event,) = result.summary["timeline"]
    assert len(event["peers"]) == 5 and result.summary["peers_alive"] == 15
    assert rounds(result) == list(range(1, 21))
    assert result.summary["mean_accuracy"] > 0.75


# ---- gossip (and D-PSGD) -------------------------------------------------------------


def test_gossip_survivors_finish_when_half_the_peers_crash() -> None:
    config = make_config(**GOSSIP, seed=1, merge_timeout=1.0, churn=[churn("crash", 4, 0.5)])
    result = simulate(config)
    assert rounds(result) == list(range(1, 11))  # lines still come out, in round order
    reporting = {m["round"]: m["peers_reporting"] for m in result.metrics}
    assert reporting[10] == 6 and reporting[2] == 12
    assert result.summary["peers_alive"] == 6
    assert len(result.summary["peer_accuracy"]) == 6  # only the live peers count at the end
    assert result.summary["mean_accuracy"] > 0.8


def test_gossip_joining_peers_get_neighbours_and_report_rounds() -> None:
    config = make_config(**GOSSIP, seed=2, churn=[churn("join", 3, 3)])
    result = simulate(config)
    (event,) = result.summary["timeline"]
    assert event["peers"] == [12, 13, 14]
    assert rounds(result) == list(range(1, 11))
    assert result.metrics[-1]["peers_reporting"] == 15
    assert all(result.training_jobs[peer] > 0 for peer in event["peers"])
    assert result.summary["messages_rejected"] == {}


def test_gossip_graceful_leave_and_dpsgd_crash_complete() -> None:
    leave = simulate(make_config(**GOSSIP, seed=3, churn=[churn("leave", 5, 2)]))
    assert rounds(leave) == list(range(1, 11)) and leave.summary["peers_alive"] == 10
    dpsgd = make_config(**GOSSIP, protocol="dpsgd", merge_timeout=1.0, churn=[churn("crash", 3, 4)])
    result = simulate(dpsgd)
    assert rounds(result) == list(range(1, 11)) and result.summary["peers_alive"] == 8


def test_churn_same_seed_same_result() -> None:
    config = make_config(
        **GOSSIP, seed=5, merge_timeout=1.0,
        churn=[churn("crash", 3, 0.25), churn("join", 4, 2), churn("leave", 6, 1)],
    )  # fmt: skip
    first, second = simulate(config), simulate(config)
    drop = {"wall_seconds"}
    assert {k: v for k, v in first.summary.items() if k not in drop} == {
        k: v for k, v in second.summary.items() if k not in drop
    }
    assert first.metrics == second.metrics


def test_runs_without_churn_are_unchanged_by_the_churn_stream() -> None:
    # the churn stream is an extra seed branch: it must not shift the others
    plain = simulate(make_config(**GOSSIP, seed=7))
    harmless = simulate(make_config(**GOSSIP, seed=7, churn=[churn("crash", 99, 0.5)]))
    assert plain.metrics == harmless.metrics


# ---- the recorder --------------------------------------------------------------------


class FakeEvaluator:
    def accuracy(self, params: Params) -> float:
        return float(params["acc"][0])


def recorder(reporters: set[Any] | None) -> tuple[RoundRecorder, list[MetricsLine]]:
    emitted: list[MetricsLine] = []
    rec = RoundRecorder(
        FakeEvaluator(),  # type: ignore[arg-type]
        reporters,
        rounds=10,
        eval_every=1,
        bytes_sent=lambda: 0,
        emit=emitted.append,
    )
    return rec, emitted


def acc(value: float) -> Params:
    return {"acc": np.array([value])}


def test_recorder_with_any_reporter_emits_a_round_once_a_later_one_is_reported() -> None:
    rec, emitted = recorder(None)
    rec.on_round(7, 1, acc(0.1), 1.0)
    rec.on_round(3, 1, acc(0.3), 1.1)  # a second aggregator of round 1
    assert emitted == []
    rec.on_round(5, 2, acc(0.5), 2.0)
    assert [(m["round"], m["peers_reporting"]) for m in emitted] == [(1, 2)]
    assert emitted[0]["mean_accuracy"] == pytest.approx(0.2)
    rec.on_round(9, 1, acc(0.9), 2.5)  # too late for its line
    rec.flush()
    assert [m["round"] for m in emitted] == [1, 2]
    assert rec.final_accuracy == {7: 0.1, 3: 0.3, 5: 0.5}


def test_recorder_stops_waiting_for_peers_that_are_gone_and_waits_for_joiners() -> None:
    rec, emitted = recorder({0, 1, 2})
    for peer in (0, 1, 2):
        rec.on_round(peer, 1, acc(0.5), 1.0)
    rec.on_round(0, 2, acc(0.6), 2.0)
    rec.on_round(1, 2, acc(0.6), 2.0)
    assert [m["round"] for m in emitted] == [1]
    rec.peer_gone(2)  # crashed: round 2 is complete without it
    assert [m["round"] for m in emitted] == [1, 2]
    assert 2 not in rec.final_accuracy
    rec.add_reporter(9, after_round=2)  # joined at round 2: reports from round 3 on
    rec.on_round(0, 3, acc(0.7), 3.0)
    rec.on_round(1, 3, acc(0.7), 3.0)
    assert [m["round"] for m in emitted] == [1, 2]
    rec.on_round(9, 3, acc(0.1), 3.5)
    assert emitted[-1]["round"] == 3 and emitted[-1]["peers_reporting"] == 3


# ---- configuration and command line --------------------------------------------------


def test_churn_config_is_validated() -> None:
    assert make_config(churn=[churn("join", 2, 0.25)]).joining_peers() == 4
    for bad in (churn("crash", 0, 0.5), churn("crash", 2, 0), churn("boom", 2, 1),
                churn("join", 2, 2.5)):  # fmt: skip
        with pytest.raises(ConfigError, match="churn"):
            make_config(churn=[bad])
    with pytest.raises(ConfigError, match="cannot join or recover in a fedavg run"):
        make_config(protocol="fedavg", churn=[churn("join", 2, 1)])
    with pytest.raises(ConfigError, match="shared initial model"):
        make_config(protocol="modest", shared_init=False)
    with pytest.raises(ConfigError, match="aggregators"):
        make_config(protocol="modest", sample_size=2, aggregators=3)


def test_cli_modest_and_churn_flags(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["simulate", "--protocol", "modest", "--peers", "12", "--rounds", "5",
            "--model", "logreg", "--sample-size", "4", "--aggregators", "2",
            "--success-fraction", "0.75", "--ping-timeout", "2", "--inactivity-threshold", "9",
            "--aggregation-timeout", "3", "--crash", "0.25@2", "--join", "2@3",
            "--leave", "1@4", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    assert (config["sample_size"], config["aggregators"], config["success_fraction"]) == (
        4, 2, 0.75,
    )  # fmt: skip
    assert (config["ping_timeout"], config["inactivity_threshold"]) == (2.0, 9)
    assert [e["kind"] for e in config["timeline"]] == ["crash", "join", "leave"]
    assert [e["kind"] for e in summary["timeline"]] == ["crash", "join", "leave"]
    assert summary["rounds"] == 5


@pytest.mark.parametrize("flag", [["--crash", "0.8"], ["--join", "two@3"], ["--leave", "1@x"]])
def test_cli_rejects_malformed_churn(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", *flag])
    assert exit_.value.code == 2
    assert "AMOUNT@ROUND" in capsys.readouterr().err


def test_cli_names_invalid_churn_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--crash", "1.5@3"]) == 2
    assert "crash: amount 1.5 is neither a fraction below 1 nor a count" in capsys.readouterr().err
