"""Attack specs, and that each attack changes what is trained on or sent as specified."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.attacks import parse_attack
from gossiplearn.attacks.data import (
    TRIGGER_SIZE,
    TRIGGER_VALUE,
    add_source_samples,
    add_trigger,
    poison_data,
)
from gossiplearn.attacks.metrics import success_rate, success_set
from gossiplearn.attacks.model import poison_model
from gossiplearn.errors import ConfigError

RNG = np.random.default_rng(0)
X = RNG.random((20, 1, 8, 8)).astype(np.float32)
Y = np.arange(20, dtype=np.int64) % 10
BEFORE = {
    "w": np.array([1.0, 2.0, 3.0], np.float32),
    "bn.running_mean": np.array([0.5], np.float32),
    "bn.num_batches_tracked": np.array(7, np.int64),
}
TRAINED = {**BEFORE, "w": np.array([2.0, 2.0, 1.0], np.float32)}


@pytest.mark.parametrize(
    ("spec", "name", "params"),
    [
        ("label-flip:0:1", "label-flip", (0.0, 1.0)),
        ("label-flip-all", "label-flip-all", ()),
        ("sign-flip", "sign-flip", ()),
        ("noise:gaussian:0.5", "noise:gaussian", (0.5,)),
        ("noise:uniform:-0.2:0.3", "noise:uniform", (-0.2, 0.3)),
        ("scale:10", "scale", (10.0,)),
        ("backdoor:1", "backdoor", (1.0,)),
    ],
)
def test_specs_parse(spec: str, name: str, params: tuple[float, ...]) -> None:
    attack = parse_attack(spec)
    assert (attack.name, attack.params) == (name, params)
    assert parse_attack(str(attack)) == attack


@pytest.mark.parametrize(
    "spec",
    ["flip", "label-flip:0", "label-flip:0:0", "label-flip:a:b", "noise:gaussian:-1",
     "noise:uniform:1:0", "noise:pink:1", "backdoor:1.5", "scale"],
)  # fmt: skip
def test_bad_specs_name_the_known_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match="attack"):
        parse_attack(spec)


def test_label_flip_changes_only_the_source_class() -> None:
    x, y = poison_data(parse_attack("label-flip:3:5"), X, Y, 10, RNG)
    assert x is X
    assert np.all(y[Y == 3] == 5)
    assert np.array_equal(y[Y != 3], Y[Y != 3])


def test_label_flip_all_mirrors_every_label() -> None:
    _, y = poison_data(parse_attack("label-flip-all"), X, Y, 10, RNG)
    assert np.array_equal(y, 9 - Y)


def test_backdoor_stamps_the_trigger_and_relabels_a_fraction() -> None:
    x, y = poison_data(parse_attack("backdoor:7"), X, Y, 10, np.random.default_rng(1))
    stamped = np.all(x[..., -TRIGGER_SIZE:, -TRIGGER_SIZE:] == TRIGGER_VALUE, axis=(1, 2, 3))
    assert 0 < stamped.sum() < len(X)
    assert np.all(y[stamped] == 7)
    assert np.array_equal(y[~stamped], Y[~stamped])
    assert np.array_equal(x[~stamped], X[~stamped])
    assert np.array_equal(add_trigger(X)[..., :-TRIGGER_SIZE, :], X[..., :-TRIGGER_SIZE, :])


def test_model_attacks_leave_data_alone_and_data_attacks_leave_models_alone() -> None:
    x, y = poison_data(parse_attack("sign-flip"), X, Y, 10, RNG)
    assert x is X and y is Y
    assert poison_model(parse_attack("label-flip:0:1"), BEFORE, TRAINED, RNG) is TRAINED


def test_sign_flip_reverses_the_update() -> None:
    sent = poison_model(parse_attack("sign-flip"), BEFORE, TRAINED, RNG)
    np.testing.assert_allclose(sent["w"], [0.0, 2.0, 5.0])
    assert sent["bn.running_mean"] is TRAINED["bn.running_mean"]
    assert sent["bn.num_batches_tracked"] is TRAINED["bn.num_batches_tracked"]
    assert sent["w"].dtype == np.float32


def test_scale_boosts_the_update() -> None:
    sent = poison_model(parse_attack("scale:10"), BEFORE, TRAINED, RNG)
    np.testing.assert_allclose(sent["w"], [11.0, 2.0, -17.0])


def test_noise_replaces_the_model_with_draws() -> None:
    big = {"w": np.zeros(10_000, np.float32)}
    gauss = poison_model(parse_attack("noise:gaussian:2"), big, big, np.random.default_rng(0))
    assert abs(gauss["w"].std() - 2.0) < 0.1
    uniform = poison_model(parse_attack("noise:uniform:-0.2:0.3"), big, big, RNG)
    assert uniform["w"].min() >= -0.2 and uniform["w"].max() <= 0.3
    assert abs(uniform["w"].mean() - 0.05) < 0.01


def test_success_sets() -> None:
    inputs, target = success_set(parse_attack("label-flip:2:4"), X, Y)
    assert target == 4 and len(inputs) == int(np.sum(Y == 2))
    inputs, target = success_set(parse_attack("backdoor:7"), X, Y)
    assert target == 7 and len(inputs) == int(np.sum(Y != 7))
    assert np.all(inputs[..., -1, -1] == TRIGGER_VALUE)
    assert success_rate(np.array([4, 4, 1, 4]), 4) == 0.75
    with pytest.raises(ValueError):
        success_set(parse_attack("sign-flip"), X, Y)


def test_a_label_flip_attacker_gets_samples_of_the_source_class() -> None:
    # An attacker whose shard has no 3s could not flip any: it gathers some first.
    x, y = X[Y != 3], Y[Y != 3]
    pool_x = RNG.random((40, 1, 8, 8)).astype(np.float32)
    pool_y = np.arange(40, dtype=np.int64) % 4  # ten 3s in the pool
    attack = parse_attack("label-flip:3:5")
    more_x, more_y = add_source_samples(attack, x, y, pool_x, pool_y, np.random.default_rng(1))
    assert len(more_y) == len(y) + 10  # as many as it has, capped by the pool's ten
    assert np.all(more_y[len(y) :] == 3)
    assert any(np.array_equal(more_x[-1], p) for p in pool_x[pool_y == 3])
    _, flipped = poison_data(attack, more_x, more_y, 10, RNG)
    assert np.count_nonzero(flipped == 5) == np.count_nonzero(y == 5) + 10
    _, fewer_y = add_source_samples(attack, x, y, pool_x, pool_y, RNG, count=4)
    assert len(fewer_y) == len(y) + 4


def test_only_label_flips_get_source_samples() -> None:
    for spec in ("label-flip-all", "backdoor:1", "sign-flip"):
        x, y = add_source_samples(parse_attack(spec), X, Y, X, Y, RNG)
        assert x is X and y is Y
