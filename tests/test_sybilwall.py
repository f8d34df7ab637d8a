"""SybilWall: record gossip, history table, FoolsGold-weighted merge, wire format, and a
small Sybil label-flip simulation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest

from gossiplearn import make_config, simulate
from gossiplearn.errors import ConfigError, MalformedMessage, ModelMismatch, NonFiniteModel
from gossiplearn.peer import PeerConfig
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.events import (
    Finished,
    MessageReceived,
    PeerDown,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    Timer,
    TrainingDone,
)
from gossiplearn.protocols.messages import ModelMessage, spec_of
from gossiplearn.protocols.sybilwall import (
    Record,
    SybilWallConfig,
    SybilWallCore,
    selection_probabilities,
    sybilwall_merge,
)
from gossiplearn.protocols.sybilwall_messages import MAX_DISTANCE, HistoryRecord
from gossiplearn.types import Params, PeerId


def vec(*values: float) -> Params:
    return {"w": np.array(values, dtype=np.float32)}


def core(
    neighbours: list[PeerId] | None = None, *, max_records: int = 64, seed: int = 0, rounds: int = 3
) -> SybilWallCore:
    config = SybilWallConfig(
        rounds=rounds, local_steps=1, merge_timeout=5.0, max_records=max_records
    )
    return SybilWallCore(0, config, neighbours or [1, 2], vec(0, 0, 0), np.random.default_rng(seed))


def model_from(c: SybilWallCore, sender: PeerId, params: Params, round_: int = 1) -> list[Any]:
    return list(c.handle(0.0, MessageReceived(sender, ModelMessage(round_, params))))


def record_from(
    c: SybilWallCore, sender: PeerId, origin: PeerId, distance: int, round_: int, params: Params
) -> None:
    c.handle(0.0, MessageReceived(sender, HistoryRecord(round_, origin, distance, params)))


# ---- record selection ----------------------------------------------------------------


def test_selection_probabilities_follow_the_lambda_rule() -> None:
    p = selection_probabilities([1, 2, 3], 0.8)
    expected = np.array([1.0, np.exp(-0.8), np.exp(-1.6)])
    np.testing.assert_allclose(p, expected / expected.sum())


def test_picked_records_match_the_lambda_rule_empirically() -> None:
    c = core([1, 9])
    c.records = {
        10: Record(1, 1, 10, vec(1, 0, 0)),
        11: Record(1, 2, 9, vec(0, 1, 0)),
        12: Record(1, 3, 9, vec(0, 0, 1)),
    }
    draws = 20_000
    counts = Counter(c.pick_record(1) for _ in range(draws))
    weights = {10: 1.0, 11: np.exp(-0.8), 12: np.exp(-1.6)}
    total = sum(weights.values())
    for origin, weight in weights.items():
        assert abs(counts[origin] / draws - weight / total) < 0.015


def test_a_record_never_goes_back_to_its_origin_or_to_whom_it_came_from() -> None:
    c = core([1, 2])
    c.records = {1: Record(1, 1, 1, vec(1, 0, 0)), 7: Record(1, 2, 2, vec(0, 1, 0))}
    assert {c.pick_record(1) for _ in range(50)} == {7}  # 1 is the neighbour itself
    assert {c.pick_record(2) for _ in range(50)} == {1}  # 7 came from 2
    c.records = {7: Record(1, 2, 2, vec(0, 1, 0))}
    assert c.pick_record(2) is None


# ---- the history table ---------------------------------------------------------------


def test_a_model_makes_a_distance_one_history_of_the_latest_model() -> None:
    c = core([1, 2])
    model_from(c, 1, vec(1, 2, 3), round_=1)
    model_from(c, 1, vec(2, 2, 3), round_=2)
    record = c.records[1]
    assert (record.round, record.distance, record.received_from) == (2, 1, 1)
    np.testing.assert_array_equal(record.history["w"], [2, 2, 3])  # telescoped history


def test_gossiped_records_are_one_hop_farther_and_remember_their_sender() -> None:
    c = core([1, 2])
    record_from(c, 2, origin=7, distance=1, round_=3, params=vec(1, 1, 1))
    assert (c.records[7].distance, c.records[7].received_from, c.records[7].round) == (2, 2, 3)
    record_from(c, 2, origin=0, distance=1, round_=3, params=vec(1, 1, 1))  # about ourselves
    record_from(c, 5, origin=8, distance=1, round_=3, params=vec(1, 1, 1))  # not a neighbour
    record_from(c, 2, origin=9, distance=MAX_DISTANCE, round_=3, params=vec(1, 1, 1))
    assert set(c.records) == {7}


def test_direct_neighbours_are_never_overwritten_by_gossip() -> None:
    c = core([1, 2])
    model_from(c, 1, vec(1, 0, 0), round_=1)
    record_from(c, 2, origin=1, distance=1, round_=9, params=vec(0, 5, 0))
    assert (c.records[1].distance, c.records[1].round) == (1, 1)
    np.testing.assert_array_equal(c.records[1].history["w"], [1, 0, 0])


def test_stale_records_are_ignored_and_newer_ones_replace_distant_records() -> None:
    c = core([1, 2])
    record_from(c, 2, origin=7, distance=2, round_=5, params=vec(1, 0, 0))
    record_from(c, 1, origin=7, distance=1, round_=5, params=vec(0, 1, 0))  # same round
    record_from(c, 1, origin=7, distance=1, round_=4, params=vec(0, 0, 1))  # older
    np.testing.assert_array_equal(c.records[7].history["w"], [1, 0, 0])
    record_from(c, 1, origin=7, distance=4, round_=6, params=vec(0, 2, 0))  # newer
    assert (c.records[7].round, c.records[7].distance, c.records[7].received_from) == (6, 5, 1)
    # A distant record becomes direct when that peer turns out to be a neighbour.
    c.handle(0.0, MessageReceived(1, ModelMessage(1, vec(3, 3, 3))))
    record_from(c, 2, origin=1, distance=1, round_=1, params=vec(1, 1, 1))
    assert c.records[1].distance == 1


def test_distant_records_are_bounded_oldest_then_farthest_dropped_first() -> None:
    c = core([1, 2], max_records=2)
    model_from(c, 1, vec(1, 0, 0))
    record_from(c, 2, origin=7, distance=1, round_=3, params=vec(1, 1, 1))
    record_from(c, 2, origin=8, distance=3, round_=1, params=vec(1, 1, 1))
    record_from(c, 2, origin=9, distance=1, round_=1, params=vec(1, 1, 1))
    assert set(c.records) == {1, 7, 9}  # 8 is as old as 9 but farther
    record_from(c, 2, origin=10, distance=1, round_=2, params=vec(1, 1, 1))
    assert set(c.records) == {1, 7, 10}  # the direct neighbour stays


# ---- the merge -------------------------------------------------------------------------


def test_identical_sybil_histories_get_weight_zero_and_are_not_merged() -> None:
    own = vec(0, 0, 0, 0)
    honest, sybil = vec(1, 0, 0, 0), vec(0, 0, 1, 1)
    received = {1: honest, 2: sybil, 3: sybil}
    merged, weights = sybilwall_merge(own, received, dict(received))
    assert weights == {1: 1.0, 2: 0.0, 3: 0.0}
    np.testing.assert_allclose(merged["w"], [0.5, 0, 0, 0])


def test_a_lone_sybil_neighbour_is_caught_by_distant_histories() -> None:
    own = vec(0, 0, 0, 0)
    honest, sybil = vec(1, 0.2, 0, 0), vec(0, 0, 1, 1)
    distant = {50: vec(0.1, 1, 0, 0), 51: sybil, 52: sybil}
    merged, weights = sybilwall_merge(own, {1: honest, 2: sybil}, {1: honest, 2: sybil, **distant})
    assert weights[2] == 0.0
    assert weights[1] > 0.0
    np.testing.assert_allclose(
        merged["w"], (own["w"] + weights[1] * honest["w"]) / (1 + weights[1]), rtol=1e-6
    )


def test_diverse_honest_neighbours_get_weight_and_the_merge_normalises_over_them() -> None:
    own = vec(0, 0, 0)
    received = {1: vec(1, 0, 0), 2: vec(0, 1, 0)}
    histories = {**received, 9: vec(0, 0, 1)}  # distant: shapes weights, gets none
    merged, weights = sybilwall_merge(own, received, histories)
    assert weights == {1: 1.0, 2: 1.0}
    np.testing.assert_allclose(merged["w"], [1 / 3, 1 / 3, 0])  # (own + θ1 + θ2) / 3


def test_an_old_dissimilar_distant_record_does_not_silence_the_neighbours() -> None:
    # Honest models converge: today's neighbours are alike (cosine near 1), a record
    # gossiped rounds ago is not. The rescale to a top weight of 1 runs over the senders
    # only, so that stale record cannot push every neighbour's weight to 0.
    own = vec(0, 0, 0, 0)
    received = {1: vec(1, 0.30, 0.1, 0), 2: vec(1, 0.35, 0, 0.1)}
    stale = {60: vec(0.2, -1, 1, 0)}
    _, weights = sybilwall_merge(own, received, {**received, **stale})
    assert min(weights.values()) > 0.5


def test_merge_shares_normalise_the_weights_with_the_own_model() -> None:
    c = core([1, 2, 3], rounds=1)
    c.handle(0.0, Start())
    c.handle(0.0, TrainingDone(vec(0, 0, 0, 1)))
    model_from(c, 1, vec(1, 0, 0, 0))
    model_from(c, 2, vec(0, 0, 1, 1))
    model_from(c, 3, vec(0, 0, 1, 1))  # a Sybil copy of 2: both get weight 0
    assert c.last_weights == {1: 1.0, 2: 0.0, 3: 0.0}
    assert c.merge_shares == {1: 0.5, 2: 0.0, 3: 0.0}


def test_local_statistics_stay_local() -> None:
    own = {"w": np.zeros(2, np.float32), "bn.running_mean": np.full(2, 7.0, np.float32)}
    other = {"w": np.ones(2, np.float32), "bn.running_mean": np.full(2, -1.0, np.float32)}
    merged, _ = sybilwall_merge(own, {1: other}, {1: other})
    np.testing.assert_array_equal(merged["bn.running_mean"], [7, 7])
    np.testing.assert_allclose(merged["w"], [0.5, 0.5])


# ---- the round -------------------------------------------------------------------------


def test_a_round_trains_pushes_gossips_waits_and_merges() -> None:
    c = core([1, 2], rounds=1)
    (train,) = c.handle(0.0, Start())
    assert isinstance(train, StartTraining)
    model_from(c, 1, vec(1, 0, 0))  # early model from 1: already known as a record
    effects = c.handle(1.0, TrainingDone(vec(0, 0, 0)))
    sends = [e for e in effects if isinstance(e, Send)]
    assert [(s.to, type(s.message).__name__) for s in sends] == [
        (1, "ModelMessage"),
        (2, "ModelMessage"),
        (2, "HistoryRecord"),  # 1's history goes to 2, never back to 1
    ]
    assert sends[2].message.origin == 1 and sends[2].message.distance == 1
    assert any(isinstance(e, SetTimer) for e in effects)
    done = model_from(c, 2, vec(0, 1, 0))
    (report,) = [e for e in done if isinstance(e, RoundDone)]
    assert report.merged == 2
    np.testing.assert_allclose(report.params["w"], [1 / 3, 1 / 3, 0])
    assert isinstance(done[-1], Finished)


def test_the_merge_timeout_merges_what_arrived() -> None:
    c = core([1, 2])
    c.handle(0.0, Start())
    effects = c.handle(1.0, TrainingDone(vec(0, 0, 0)))
    (timer,) = [e for e in effects if isinstance(e, SetTimer)]
    model_from(c, 1, vec(1, 0, 0))
    done = c.handle(6.0, Timer(timer.name, timer.token))
    (report,) = [e for e in done if isinstance(e, RoundDone)]
    assert report.merged == 1
    np.testing.assert_allclose(report.params["w"], [0.5, 0, 0])


def test_a_neighbour_that_goes_down_is_no_longer_waited_for() -> None:
    c = core([1, 2])
    c.handle(0.0, Start())
    c.handle(1.0, TrainingDone(vec(0, 0, 0)))
    model_from(c, 1, vec(1, 0, 0))
    done = c.handle(2.0, PeerDown(2))
    assert any(isinstance(e, RoundDone) for e in done)


# ---- wire format ---------------------------------------------------------------------


SPEC = spec_of(vec(0, 0, 0))


@pytest.mark.parametrize("origin", [7, 2**63 - 1, "12D3KooWabc"])
def test_history_record_round_trip(origin: PeerId) -> None:
    message = HistoryRecord(4, origin, 3, vec(1.5, -2, 0))
    decoded = decode_message(encode(message), SPEC)
    assert isinstance(decoded, HistoryRecord)
    assert (decoded.round, decoded.origin, decoded.distance) == (4, origin, 3)
    np.testing.assert_array_equal(decoded.params["w"], [1.5, -2, 0])


def _wire(**changes: Any) -> bytes:
    fields = msgpack.unpackb(encode(HistoryRecord(4, 7, 3, vec(1, 2, 3))), raw=False)
    fields.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del fields[key]
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"signature": b"x" * 63}, MalformedMessage),
        ({"signature": "x" * 64}, MalformedMessage),
        ({"signature": None}, MalformedMessage),
        ({"distance": MAX_DISTANCE + 1}, MalformedMessage),
        ({"distance": -1}, MalformedMessage),
        ({"round": True}, MalformedMessage),
        ({"round": 2**64 - 1}, MalformedMessage),
        ({"origin": True}, MalformedMessage),
        ({"origin": 1.5}, MalformedMessage),
        ({"origin": ""}, MalformedMessage),
        ({"origin": -3}, MalformedMessage),
        ({"origin": "x" * 300}, MalformedMessage),
        ({"origin": [1]}, MalformedMessage),
        ({"origin": None}, MalformedMessage),
        ({"extra": 1}, MalformedMessage),
        ({"version": 1}, MalformedMessage),
        ({"tensors": [["w", "<f4", [2], b"\0" * 8]]}, ModelMismatch),
        ({"tensors": [["w", "<f8", [3], b"\0" * 24]]}, ModelMismatch),
        (
            {"tensors": [["w", "<f4", [3], np.array([1, np.nan, 0], "<f4").tobytes()]]},
            NonFiniteModel,
        ),
        ({"tensors": [["w", "<f4", [3], b"\0" * 11]]}, MalformedMessage),
    ],
)
def test_malformed_history_records_are_rejected(changes: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        decode_message(_wire(**changes), SPEC)


def test_history_record_checks_its_fields_at_the_sender() -> None:
    for bad in [dict(distance=-1), dict(round=-1), dict(origin=""), dict(origin=True)]:
        fields: dict[str, Any] = dict(round=1, origin=3, distance=1) | bad
        with pytest.raises(ValueError):
            HistoryRecord(params=vec(1, 2, 3), **fields)


# ---- configuration and simulation ------------------------------------------------------


BASE = dict(
    peers=24,
    rounds=15,
    topology="regular:4",
    model="logreg",
    shared_init=True,
    partition="dirichlet:0.5",
)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(protocol="dpsgd"), "protocol gossip"),
        (dict(push="one"), "drop push"),
        (dict(buffer_size=2), "drop push"),
        (dict(aggregator_params={"trim": 2}), "do not fit"),
        (dict(aggregator_params={"max_records": -1}), "max_records"),
        (dict(aggregator_params={"lam": 0}), "lam"),
    ],
)
def test_bad_sybilwall_settings_are_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(**(BASE | dict(aggregator="sybilwall") | values))


def test_real_peers_run_sybilwall() -> None:
    assert PeerConfig(aggregator="sybilwall").aggregator == "sybilwall"


def test_sybilwall_resists_a_sybil_label_flip_attack_better_than_mean() -> None:
    # Measured (24 peers, regular:4, dirichlet:0.5, logreg, 15 rounds, 1 attacker with 10
    # identities flipping 0 -> 1): seed 4: mean 0.699 clean / 0.545 attacked (attack
    # success 0.98), sybilwall 0.781 / 0.726 (0.008); seed 6: mean 0.777 / 0.465 (0.93),
    # sybilwall 0.806 / 0.777 (0.0).
    # The baseline is plain averaging, as in the paper (mean without self-centred clipping).
    attack = dict(attack="label-flip:0:1", attackers=1, sybils=10)
    for seed in (4, 6):
        runs = {
            (rule, attacked): simulate(
                make_config(
                    **BASE, seed=seed, aggregator=rule, clip=False, **(attack if attacked else {})
                )
            ).summary
            for rule in ("mean", "sybilwall")
            for attacked in (False, True)
        }
        drop = {
            rule: runs[rule, False]["mean_accuracy"] - runs[rule, True]["mean_accuracy"]
            for rule in ("mean", "sybilwall")
        }
        assert runs["mean", True]["attack_success_rate"] > 0.5
        assert runs["sybilwall", True]["attack_success_rate"] < 0.1
        assert drop["sybilwall"] < drop["mean"] - 0.05
        # Records sent to the attacker's identities are dropped: their cores speak models only.
        assert runs["sybilwall", True]["messages_rejected"].get("UnexpectedMessage", 0) > 0
