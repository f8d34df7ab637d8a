"""Bristle: the prioritiser, the integrator's formulas, the core, and simulated runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gossiplearn.aggregation.bristle import (
    class_score,
    f1_per_class,
    head_matrix,
    head_params,
    integrate,
    prioritise,
    selection_counts,
)
from gossiplearn.config import make_config
from gossiplearn.errors import ConfigError
from gossiplearn.learning.models import HEAD_BIAS, HEAD_WEIGHT, FrozenFeatureHead
from gossiplearn.learning.trainer import Learner
from gossiplearn.protocols.bristle import BristleConfig, BristleCore, ValidationSet, sent_tensors
from gossiplearn.protocols.events import MessageReceived, Send, Start, StartTraining, TrainingDone
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.scenarios.run import simulate
from gossiplearn.types import Params


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- prioritiser -------------------------------------------------------------------------


def test_selection_counts_of_the_paper() -> None:
    assert selection_counts(0.4, 10) == (4, 5, 2)
    assert selection_counts(0.0, 10) == (10, 0, 0)
    assert selection_counts(1.0, 10) == (0, 0, 10)


def heads_at(distances: list[float]) -> dict[int, np.ndarray]:
    """Heads [2, 2] whose distance to the zero head is the given one."""
    return {i: np.array([[d, 0.0], [0.0, 0.0]]) for i, d in enumerate(distances)}


def test_prioritiser_draws_from_each_third() -> None:
    own = np.zeros((2, 2))
    others = heads_at([float(d) for d in range(20, 0, -1)])  # peer 19 is the nearest
    nearest_first = list(range(19, -1, -1))
    near, middle, far = nearest_first[:6], nearest_first[6:14], nearest_first[14:]
    for seed in range(5):
        chosen = prioritise(own, others, np.random.default_rng(seed))
        assert len(chosen) == 11 and len(set(chosen)) == 11
        assert sum(p in near for p in chosen) == 4
        assert sum(p in middle for p in chosen) == 5
        assert sum(p in far for p in chosen) == 2
        assert chosen == sorted(chosen, key=nearest_first.index)  # nearest first


def test_prioritiser_takes_all_when_few_and_fills_a_short_third() -> None:
    own = np.zeros((2, 2))
    few = heads_at([3.0, 1.0, 2.0])
    assert prioritise(own, few, np.random.default_rng(0)) == [1, 2, 0]
    # 12 heads: thirds of 4, 4, 4; the near third gives its 4, the middle 4 of 5 wanted, so
    # the nearest head not taken (from the far third) makes up the shortfall.
    twelve = heads_at([float(d) for d in range(1, 13)])
    chosen = prioritise(own, twelve, np.random.default_rng(1))
    assert len(chosen) == 11
    assert set(range(8)) <= set(chosen)  # the near and middle thirds entirely


# ---- integrator formulas -----------------------------------------------------------------


def test_class_score_formulas() -> None:
    # Peer better: diff^(3 + F1_me); worse: -diff^(4 + F1_me), bounded below by -100.
    assert class_score(0.5, 0.7, bounded=True) == pytest.approx(2.0**3.5)
    assert class_score(0.5, 0.2, bounded=False) == pytest.approx(-(3.0**4.5))
    assert class_score(0.5, 0.2, bounded=True) == -100.0
    assert class_score(0.3, 0.3, bounded=True) == 0.0


def test_f1_per_class() -> None:
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 1])
    f1 = f1_per_class(predictions, labels, [0, 1])
    assert f1[0] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))
    assert f1[1] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))


def two_peer_case() -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Two familiar classes (0, 1) and a foreign one (2); features are one-hot."""
    features = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1])
    own = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # predicts 0 for both
    good = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]])  # predicts both right
    bad = np.array([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])  # predicts 1 for both
    return own, {"good": good, "bad": bad}, features, labels


def test_integrator_formulas_by_hand() -> None:
    own, heads, features, labels = two_peer_case()
    result = integrate(own, heads, features, labels, bias=False, overlap=0, center=False)

    f1_me = {0: 2 / 3, 1: 0.0}
    assert result.own_f1 == pytest.approx(f1_me)
    # "good": F1 1 on both classes, certainty mean - std = 1; better on both.
    s0 = (10 * abs(2 / 3 - 1)) ** (3 + 2 / 3)
    s1 = 10.0**3  # diff 10, F1_me 0; above -100, so bounded = unbounded
    w_good = {c: max(0, 10 * sigmoid(s / 100) - 4) * 1.0 for c, s in ((0, s0), (1, s1))}
    u_good = max(0, 10 * sigmoid((s0 + s1) / 100) - 4) * 1.0
    # "bad": F1 0 on class 0, 2/3 on class 1: certainty max(0, 1/3 - 1/3) = 0 ⇒ weight 0.
    bad = result.assessments["bad"]
    assert bad.f1 == pytest.approx({0: 0.0, 1: 2 / 3})
    assert bad.certainty == pytest.approx(0.0)
    assert bad.class_weights == pytest.approx({0: 0.0, 1: 0.0})
    assert bad.foreign_weight == pytest.approx(0.0)
    good = result.assessments["good"]
    assert good.class_weights == pytest.approx(w_good)
    assert good.foreign_weight == pytest.approx(u_good)

    expected = own.copy()
    for c in (0, 1):
        expected[:, c] = (own[:, c] + w_good[c] * heads["good"][:, c]) / (1 + w_good[c])
    expected[:, 2] = (own[:, 2] + u_good * heads["good"][:, 2]) / (1 + u_good)
    np.testing.assert_allclose(result.matrix, expected)
    share = np.mean(
        [w_good[0] / (1 + w_good[0]), w_good[1] / (1 + w_good[1]), u_good / (1 + u_good)]
    )
    assert result.shares == pytest.approx({"good": share, "bad": 0.0})

    centred = integrate(own, heads, features, labels, bias=False, overlap=0, center=True)
    np.testing.assert_allclose(centred.matrix, expected - expected.mean(axis=0))


def test_integrator_considers_only_a_peers_top_classes() -> None:
    own, heads, features, labels = two_peer_case()
    result = integrate(own, heads, features, labels, bias=False, overlap=1, center=False)
    good = result.assessments["good"]
    assert good.considered == [0]  # a tie at F1 1 goes to the lower class
    assert good.class_weights[1] == 0.0
    s0 = (10 * abs(2 / 3 - 1)) ** (3 + 2 / 3)
    assert good.class_weights[0] == pytest.approx(max(0, 10 * sigmoid(s0 / 100) - 4))
    # "bad" is now judged on its best class alone (1, F1 2/3): certainty 2/3, and it is
    # better than us there, so it alone weighs in on class 1.
    bad = result.assessments["bad"]
    assert bad.considered == [1] and bad.certainty == pytest.approx(2 / 3)
    w_bad = max(0, 10 * sigmoid((10 * 2 / 3) ** 3 / 100) - 4) * 2 / 3
    assert bad.class_weights == pytest.approx({0: 0.0, 1: w_bad})
    expected = (own[:, 1] + w_bad * heads["bad"][:, 1]) / (1 + w_bad)
    np.testing.assert_allclose(result.matrix[:, 1], expected)


def test_head_matrix_round_trip_with_bias() -> None:
    params = {
        HEAD_WEIGHT: np.arange(6, dtype=np.float32).reshape(3, 2),
        HEAD_BIAS: np.array([7, 8, 9], dtype=np.float32),
    }
    matrix = head_matrix(params, HEAD_WEIGHT, HEAD_BIAS)
    assert matrix.shape == (3, 3)  # 2 features + bias row, 3 classes
    np.testing.assert_array_equal(matrix[-1], [7, 8, 9])
    back = head_params(matrix, params, HEAD_WEIGHT, HEAD_BIAS)
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])
        assert back[name].dtype == np.float32


# ---- the core ----------------------------------------------------------------------------


def test_local_training_never_changes_foreign_columns() -> None:
    torch.manual_seed(0)
    features = torch.randn(64, 4)
    labels = torch.randint(0, 2, (64,))  # classes 0 and 1 only; class 2 is foreign
    model = FrozenFeatureHead(nn.Identity(), 4, 3)
    learner = Learner(model, features, labels, lr=0.5, momentum=0.9, batch_size=16, seed=0)
    start = learner.params()
    start[HEAD_WEIGHT][2] = 0.25  # a foreign column learnt from others
    validation = ValidationSet(features[:8].numpy(), labels[:8].numpy())
    core = BristleCore(BristleConfig(rounds=3, local_steps=5), [1], start, validation,
                       np.random.default_rng(0))  # fmt: skip
    [job] = core.handle(0.0, Start())
    assert isinstance(job, StartTraining)
    trained = learner.train(job.params, job.steps)
    assert not np.allclose(trained[HEAD_WEIGHT][2], 0.25)  # the trainer did move it
    effects = core.handle(1.0, TrainingDone(trained))
    [sent] = [e for e in effects if isinstance(e, Send)]
    np.testing.assert_array_equal(sent.message.params[HEAD_WEIGHT][2], start[HEAD_WEIGHT][2])
    assert core.params[HEAD_BIAS][2] == start[HEAD_BIAS][2]
    np.testing.assert_array_equal(sent.message.params[HEAD_WEIGHT][:2], trained[HEAD_WEIGHT][:2])
    assert set(sent.message.params) == {HEAD_WEIGHT}  # only the head's weight travels


@pytest.mark.parametrize("share_bias", [False, True])
def test_core_gives_a_noise_attacker_nothing(share_bias: bool) -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(4)[:2] * 3
    labels = np.repeat([0, 1], 10)
    features = (centres[labels] + rng.normal(0, 0.3, (20, 4))).astype(np.float32)
    good = {HEAD_WEIGHT: np.vstack([centres, np.zeros((1, 4))]).astype(np.float32),
            HEAD_BIAS: np.zeros(3, np.float32)}  # fmt: skip
    noise = {HEAD_WEIGHT: rng.uniform(-0.2, 0.3, (3, 4)).astype(np.float32),
             HEAD_BIAS: rng.uniform(-0.2, 0.3, 3).astype(np.float32)}  # fmt: skip
    own = {k: np.zeros_like(v) for k, v in good.items()}
    config = BristleConfig(rounds=1, local_steps=1, share_bias=share_bias)
    core = BristleCore(config, ["honest", "attacker"], own, ValidationSet(features, labels), rng)
    core.handle(0.0, Start())
    core.handle(0.1, MessageReceived("honest", ModelMessage(1, sent_tensors(good, config))))
    core.handle(0.2, MessageReceived("attacker", ModelMessage(1, sent_tensors(noise, config))))
    core.handle(1.0, TrainingDone(own))
    assert core.last_merge is not None
    shares = core.last_merge.shares
    assert shares["attacker"] == 0.0 < shares["honest"]


def _two_class_core(config: BristleConfig) -> tuple[BristleCore, Params]:
    """A core whose own head (bias 0.5 everywhere) knows classes 0 and 1 of three."""
    rng = np.random.default_rng(1)
    centres = np.eye(4)[:3] * 3
    labels = np.repeat([0, 1], 10)
    features = (centres[labels] + rng.normal(0, 0.3, (20, 4))).astype(np.float32)
    own = {HEAD_WEIGHT: (centres * 0.5).astype(np.float32), HEAD_BIAS: np.full(3, 0.5, np.float32)}
    core = BristleCore(config, ["a"], own, ValidationSet(features, labels), rng)
    return core, own


def test_local_bias_is_never_sent_nor_merged() -> None:
    config = BristleConfig(rounds=2, local_steps=1)
    core, own = _two_class_core(config)
    better = {HEAD_WEIGHT: (np.eye(4)[:3] * 3).astype(np.float32)}
    core.handle(0.0, Start())
    core.handle(0.1, MessageReceived("a", ModelMessage(1, better)))
    effects = core.handle(1.0, TrainingDone(own))
    [sent] = [e for e in effects if isinstance(e, Send)]
    assert set(sent.message.params) == {HEAD_WEIGHT}
    assert set(core.model_message().params) == {HEAD_WEIGHT}  # greetings too
    assert core.last_merge is not None and core.last_merge.shares["a"] > 0  # it merged
    assert not np.array_equal(core.params[HEAD_WEIGHT], own[HEAD_WEIGHT])
    np.testing.assert_array_equal(core.params[HEAD_BIAS], own[HEAD_BIAS])  # bit for bit


def test_shared_bias_is_sent_and_merged() -> None:
    config = BristleConfig(rounds=2, local_steps=1, share_bias=True)
    core, own = _two_class_core(config)
    better = {HEAD_WEIGHT: (np.eye(4)[:3] * 3).astype(np.float32),
              HEAD_BIAS: np.full(3, -2.0, np.float32)}  # fmt: skip
    core.handle(0.0, Start())
    core.handle(0.1, MessageReceived("a", ModelMessage(1, better)))
    effects = core.handle(1.0, TrainingDone(own))
    [sent] = [e for e in effects if isinstance(e, Send)]
    assert set(sent.message.params) == {HEAD_WEIGHT, HEAD_BIAS}
    assert core.last_merge is not None and core.last_merge.shares["a"] > 0
    assert not np.array_equal(core.params[HEAD_BIAS], own[HEAD_BIAS])


@pytest.mark.parametrize("share_bias", [False, True])
def test_heads_that_do_not_fit_are_rejected(share_bias: bool) -> None:
    config = BristleConfig(rounds=2, local_steps=1, share_bias=share_bias)
    core, own = _two_class_core(config)
    w, b = own[HEAD_WEIGHT], own[HEAD_BIAS]
    bad: list[Params] = [
        {HEAD_WEIGHT: w, HEAD_BIAS: b} if not share_bias else {HEAD_WEIGHT: w},  # other keys
        {HEAD_WEIGHT: w, "extra": b, **({HEAD_BIAS: b} if share_bias else {})},
        {},
        {HEAD_WEIGHT: w[:2], **({HEAD_BIAS: b} if share_bias else {})},  # a class short
        {HEAD_WEIGHT: w.astype(np.float64), **({HEAD_BIAS: b} if share_bias else {})},
        {HEAD_WEIGHT: np.full_like(w, np.nan), **({HEAD_BIAS: b} if share_bias else {})},
    ]
    if share_bias:
        bad.append({HEAD_WEIGHT: w, HEAD_BIAS: b[:2]})
    core.handle(0.0, Start())
    for round_, params in enumerate(bad, start=1):
        core.handle(0.1, MessageReceived("a", ModelMessage(round_, params)))
    assert core.rejected["BadHead"] == len(bad)
    assert not core.recent and not core.pending
    core.handle(0.2, MessageReceived("a", ModelMessage(1, sent_tensors(own, config))))
    assert list(core.recent) == ["a"]  # a fitting head (the replay mark did not move)


def test_sent_tensors() -> None:
    params = {HEAD_WEIGHT: np.zeros((3, 4)), HEAD_BIAS: np.zeros(3)}
    assert set(sent_tensors(params, BristleConfig(rounds=1, local_steps=1))) == {HEAD_WEIGHT}
    shared = BristleConfig(rounds=1, local_steps=1, share_bias=True)
    assert set(sent_tensors(params, shared)) == {HEAD_WEIGHT, HEAD_BIAS}
    assert make_config(aggregator="bristle").sent_params(params).keys() == {HEAD_WEIGHT}
    both = make_config(aggregator="bristle", aggregator_params={"bias": "shared"})
    assert both.sent_params(params).keys() == {HEAD_WEIGHT, HEAD_BIAS}
    assert make_config(aggregator="mean").sent_params(params) is params


# ---- configuration and simulated runs ----------------------------------------------------


def test_bristle_params_are_validated() -> None:
    make_config(aggregator="bristle", aggregator_params={"alpha": 0.3, "overlap": 2})
    make_config(aggregator="bristle", aggregator_params={"bias": "shared"})
    for bad in ({"alpha": 2}, {"candidates": 0}, {"center": 3}, {"lam": 1}, {"extractor": 3},
                {"bias": "global"}, {"bias": 1}):  # fmt: skip
        with pytest.raises(ConfigError, match=r"aggregator_params|bristle"):
            make_config(aggregator="bristle", aggregator_params=bad)
    with pytest.raises(ConfigError, match="protocol gossip"):
        make_config(aggregator="bristle", protocol="dpsgd")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run(cache: Path, monkeypatch: pytest.MonkeyPatch, **values: object) -> dict[str, object]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    base: dict[str, object] = dict(aggregator="bristle", dataset="digits", peers=8, rounds=8,
                                   topology="regular:4", seed=3)  # fmt: skip
    return simulate(make_config(**(base | values))).summary


def test_bristle_learns_digits_without_the_held_out_rows(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run(cache, monkeypatch)
    assert summary["mean_accuracy"] is not None and summary["mean_accuracy"] > 0.7  # chance 0.1
    held_out = round(0.1 * 1438)  # about 10% of each class of digits' training split
    assert abs(int(str(summary["train_samples"])) - (1438 - held_out)) <= 10
    assert list(cache.glob("gossiplearn/extractors/digits-mlp-*seed3*.pt"))


@pytest.mark.parametrize("attack", ["label-flip-all", "noise:uniform:-0.2:0.3"])
def test_bristle_keeps_honest_accuracy_under_attack(
    cache: Path, monkeypatch: pytest.MonkeyPatch, attack: str
) -> None:
    clean = run(cache, monkeypatch)
    attacked = run(cache, monkeypatch, attack=attack, attackers=2)
    assert isinstance(clean["mean_accuracy"], float)
    assert isinstance(attacked["mean_accuracy"], float)
    assert attacked["mean_accuracy"] > 0.7
    assert attacked["mean_accuracy"] > clean["mean_accuracy"] - 0.1
    # Heads that do badly on the validation set get (next to) no weight; plain averaging
    # would give the 2 attackers among 4 neighbours about 1/6 of each merge.
    assert isinstance(attacked["attacker_weight"], float)
    assert attacked["attacker_weight"] < 0.05


def test_bristle_shares_the_bias_on_request_also_with_attackers(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = run(
        cache,
        monkeypatch,
        aggregator_params={"bias": "shared"},
        attack="noise:uniform:-0.2:0.3",
        attackers=2,
        rounds=4,
    )
    assert isinstance(summary["mean_accuracy"], float) and summary["mean_accuracy"] > 0.5


def test_window_partition_runs_bristle(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = run(cache, monkeypatch, partition="window:4", rounds=4)
    assert isinstance(summary["mean_accuracy"], float)
