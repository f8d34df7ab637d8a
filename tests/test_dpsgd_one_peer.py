"""D-PSGD on the one-peer exponential graph (``--dpsgd-graph one-peer-exp``): who sends
to whom each round, the half-and-half merge, the config checks, and a simulated run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from gossiplearn.cli import main
from gossiplearn.protocols.dpsgd import (
    DPSGDConfig,
    DPSGDCore,
    exponential_hops,
    metropolis_hastings_weights,
    one_peer_exponential,
)
from gossiplearn.protocols.events import (
    Effect,
    MessageReceived,
    PeerDown,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    TrainingDone,
)
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.topologies.builders import exponential
from gossiplearn.types import Params


def p(value: float) -> Params:
    return {"w": np.array([value], np.float32)}


def w(params: Params) -> float:
    return float(params["w"][0])


def of_type(effects: Sequence[Effect], kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def test_hops_cycle_through_powers_of_two_below_the_peer_count() -> None:
    assert exponential_hops(8) == [1, 2, 4]
    assert exponential_hops(50) == [1, 2, 4, 8, 16, 32]
    assert exponential_hops(2) == [1]


def test_who_sends_to_whom_each_round() -> None:
    # 8 peers: rounds 1, 2, 3 use hops 1, 2, 4; round 4 starts over with hop 1.
    assert [one_peer_exponential(0, 8, r) for r in (1, 2, 3, 4)] == [
        (1, 7),
        (2, 6),
        (4, 4),
        (1, 7),
    ]
    assert one_peer_exponential(6, 8, 2) == (0, 4)
    assert one_peer_exponential(49, 50, 6) == (31, 17)  # hop 32, mod 50


@pytest.mark.parametrize("peers", [2, 7, 8, 50, 100])
def test_each_round_every_peer_sends_once_and_receives_once_on_an_edge(peers: int) -> None:
    graph = exponential(peers, 0)
    for round_ in range(1, 2 * len(exponential_hops(peers)) + 1):
        sends = [one_peer_exponential(i, peers, round_) for i in range(peers)]
        targets = sorted(to for to, _ in sends)
        assert targets == list(range(peers))  # a permutation: one in, one out each
        for i, (to, source) in enumerate(sends):
            assert graph.has_edge(i, to)
            assert one_peer_exponential(source, peers, round_)[0] == i  # the source sends to i


def test_bad_peer_ids_and_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.7"):
        one_peer_exponential(8, 8, 1)
    with pytest.raises(ValueError, match="from 1"):
        one_peer_exponential(0, 8, 0)


def one_peer_core(peer: int = 0, peers: int = 8, rounds: int = 4) -> DPSGDCore:
    weights = metropolis_hastings_weights(exponential(peers, 0), peer)
    config = DPSGDConfig(rounds=rounds, local_steps=2)
    return DPSGDCore(config, weights, p(0.0), one_peer=(peer, peers))


def test_core_pushes_to_one_peer_waits_for_one_and_merges_half_and_half() -> None:
    core = one_peer_core()
    core.handle(0.0, Start())
    effects = core.handle(1.0, TrainingDone(p(4.0)))
    assert [s.to for s in of_type(effects, Send)] == [1]  # round 1: hop 1
    assert of_type(effects, SetTimer) and not of_type(effects, RoundDone)
    # a model from a neighbour that is not this round's source is not waited for
    assert core.handle(1.5, MessageReceived(1, ModelMessage(1, p(100.0), 0))) == []
    effects = core.handle(2.0, MessageReceived(7, ModelMessage(1, p(8.0), 0)))
    assert [type(e) for e in effects] == [RoundDone, StartTraining]
    assert w(effects[0].params) == pytest.approx(6.0)  # (4 + 8) / 2; peer 1's ignored
    # round 2: hop 2, to 2, from 6
    effects = core.handle(3.0, TrainingDone(p(2.0)))
    assert [s.to for s in of_type(effects, Send)] == [2]
    effects = core.handle(4.0, MessageReceived(6, ModelMessage(2, p(4.0), 0)))
    assert w(of_type(effects, RoundDone)[0].params) == pytest.approx(3.0)


def test_core_does_not_wait_for_a_source_that_went_down() -> None:
    core = one_peer_core()
    core.handle(0.0, Start())
    core.handle(1.0, TrainingDone(p(4.0)))
    effects = core.handle(2.0, PeerDown(7))
    done = of_type(effects, RoundDone)
    assert done and w(done[0].params) == pytest.approx(4.0)  # nothing merged


def test_bad_dpsgd_graph_exits_2_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--peers", "6", "--rounds", "1", "--quiet", "--out", str(tmp_path)]
    args = ["--protocol", "dpsgd", "--topology", "exponential", "--dpsgd-graph", "one-peer"]
    assert main(["simulate", *base, *args]) == 2
    err = capsys.readouterr().err
    assert "dpsgd_graph" in err and "neighbours" in err and "one-peer-exp" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--protocol", "dpsgd", "--topology", "ring"], "topology exponential"),
        (["--protocol", "gossip", "--topology", "exponential"], "protocol dpsgd"),
    ],
)
def test_one_peer_exp_needs_dpsgd_on_the_exponential_graph(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--peers", "6", "--rounds", "1", "--quiet", "--out", str(tmp_path)]
    assert main(["simulate", *base, *args, "--dpsgd-graph", "one-peer-exp"]) == 2
    assert expected in capsys.readouterr().err


def test_simulated_run_sends_one_model_per_peer_and_round(tmp_path: Path) -> None:
    runs = {}
    for graph in ("neighbours", "one-peer-exp"):
        out = tmp_path / graph
        args = ["--peers", "8", "--rounds", "3", "--topology", "exponential", "--quiet"]
        args += ["--protocol", "dpsgd", "--dpsgd-graph", graph, "--model", "logreg"]
        assert main(["simulate", *args, "--out", str(out)]) == 0
        runs[graph] = json.loads((out / "summary.json").read_text())
    assert runs["one-peer-exp"]["messages_sent"] == 8 * 3
    degree = 2 * nx.number_of_edges(exponential(8, 0)) // 8
    assert runs["neighbours"]["messages_sent"] == 8 * 3 * degree
    assert runs["one-peer-exp"]["config"]["dpsgd_graph"] == "one-peer-exp"
    assert runs["one-peer-exp"]["mean_accuracy"] > 0.2
