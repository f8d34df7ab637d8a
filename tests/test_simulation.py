"""End-to-end simulations on the bundled digits dataset: learning, determinism, protocols."""

from __future__ import annotations

import gc

import pytest

from gossiplearn import make_config, simulate

SMALL = dict(peers=8, rounds=12, topology="regular:3", dataset="digits", model="logreg")


def test_same_seed_gives_identical_summary() -> None:
    config = make_config(**SMALL, seed=7)
    thresholds = gc.get_threshold()
    first, second = simulate(config), simulate(config)
    assert gc.get_threshold() == thresholds  # a run tunes the cycle collector, then restores it
    drop = {"wall_seconds"}
    assert {k: v for k, v in first.summary.items() if k not in drop} == {
        k: v for k, v in second.summary.items() if k not in drop
    }
    assert first.metrics == second.metrics


def test_other_seed_gives_other_run() -> None:
    a = simulate(make_config(**SMALL, seed=1)).summary
    b = simulate(make_config(**SMALL, seed=2)).summary
    assert a["peer_accuracy"] != b["peer_accuracy"]


@pytest.mark.parametrize(
    ("protocol", "aggregator"),
    [("gossip", "vc"), ("gossip", "mean"), ("dpsgd", "vc"), ("fedavg", "vc")],
)
def test_every_protocol_learns_with_a_shared_init(protocol: str, aggregator: str) -> None:
    config = make_config(**SMALL, protocol=protocol, aggregator=aggregator, shared_init=True)
    result = simulate(config)
    assert result.summary["mean_accuracy"] > 0.8
    assert result.summary["rounds"] == SMALL["rounds"]
    assert [m["round"] for m in result.metrics] == list(range(1, SMALL["rounds"] + 1))
    assert result.summary["messages_rejected"] == {}


def test_vc_rescues_independent_initialisations_where_mean_stalls() -> None:
    # The vanishing-variance problem: a deeper net averaged from independent inits.
    base = dict(SMALL, peers=16, topology="regular:4", model="mlp", rounds=30, seed=3)
    vc = simulate(make_config(**base, aggregator="vc")).summary["mean_accuracy"]
    mean = simulate(make_config(**base, aggregator="mean")).summary["mean_accuracy"]
    assert vc > 0.8
    assert vc > mean + 0.2


def test_bytes_and_messages_are_counted() -> None:
    result = simulate(make_config(**SMALL))
    summary = result.summary
    # regular:3 push-all gossip: every peer sends one message per neighbour per round.
    assert summary["messages_sent"] == SMALL["peers"] * 3 * SMALL["rounds"]
    per_message = summary["bytes_sent"] / summary["messages_sent"]
    assert 64 * 10 * 4 < per_message < 64 * 10 * 4 + 1024  # logreg weights + framing
    assert [m["bytes_sent"] for m in result.metrics] == sorted(
        m["bytes_sent"] for m in result.metrics
    )


def test_push_one_sends_a_message_per_peer_per_round() -> None:
    summary = simulate(make_config(**SMALL, push="one")).summary
    assert summary["messages_sent"] == SMALL["peers"] * SMALL["rounds"]


def test_fedavg_counts_both_directions() -> None:
    summary = simulate(make_config(**SMALL, protocol="fedavg", sample_fraction=0.5)).summary
    assert summary["messages_sent"] == 2 * (SMALL["peers"] // 2) * SMALL["rounds"]


@pytest.mark.parametrize("protocol", ["gossip", "dpsgd", "modest", "fedavg"])
def test_compressed_runs_learn_and_count_the_compressed_bytes(protocol: str) -> None:
    base = dict(SMALL, protocol=protocol, shared_init=True, sample_size=4)
    plain = simulate(make_config(**base)).summary
    packed = simulate(make_config(**base, compression="topk:0.2+int8")).summary
    assert packed["mean_accuracy"] > plain["mean_accuracy"] - 0.1
    # MoDeST sends to a new sample each round, FedAvg's server to a new sample of clients:
    # first contacts get full (int8) models
    fewer = 2.5 if protocol in ("modest", "fedavg") else 4
    assert packed["bytes_sent"] < plain["bytes_sent"] / fewer
    assert packed["messages_rejected"] == {}  # nothing lost: no reference ever missing


def test_lost_messages_and_restarts_cost_full_models_never_wrong_ones() -> None:
    """With 10% of the messages lost and peers that crash and recover (holding no
    references), receivers drop what they cannot rebuild, ask for full models, and the
    network still learns; the same seed gives the same run."""
    timeline = [
        {"kind": "crash", "at_round": 3, "amount": 2},
        {"kind": "recover", "at_round": 6, "amount": 2},
    ]
    config = make_config(
        **SMALL, shared_init=True, compression="topk:0.2+int8", timeline=timeline,
        network={"loss": 0.1},
    )  # fmt: skip
    first, second = simulate(config).summary, simulate(config).summary
    assert first["messages_rejected"]["ReferenceMissing"] > 0
    assert first["mean_accuracy"] > 0.8
    assert first["peers_alive"] == SMALL["peers"]
    drop = {"wall_seconds"}
    assert {k: v for k, v in first.items() if k not in drop} == {
        k: v for k, v in second.items() if k not in drop
    }
