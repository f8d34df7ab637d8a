"""Shares: how much of each rule's merged model came from each input (own first)."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.aggregation import AGGREGATORS, SHARES, get_aggregator, get_shares
from gossiplearn.aggregation.median import median_shares
from gossiplearn.aggregation.trimmed_mean import trimmed_mean_shares
from gossiplearn.errors import ConfigError
from gossiplearn.types import Params

RNG = np.random.default_rng(7)


def model(*values: float) -> Params:
    return {"w": np.array(values, dtype=np.float32), "n.num_batches_tracked": np.array(3)}


def random_models(count: int) -> list[Params]:
    return [
        {"w": RNG.normal(size=(3, 4)).astype(np.float32), "b": RNG.normal(size=4)}
        for _ in range(count)
    ]


def test_every_rule_has_shares() -> None:
    assert SHARES.keys() == AGGREGATORS.keys()


@pytest.mark.parametrize("name", sorted(SHARES))
@pytest.mark.parametrize("received", [0, 1, 4, 7])
def test_shares_are_a_distribution_over_the_inputs(name: str, received: int) -> None:
    own, *others = random_models(1 + received)
    shares = get_shares(name)(own, others)
    assert shares.shape == (1 + received,)
    assert np.all(shares >= 0)
    assert shares.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["mean", "krum", "multi-krum", "foolsgold"])
def test_linear_rules_merge_to_the_share_weighted_sum_of_their_inputs(name: str) -> None:
    own, *others = random_models(6)
    merged = get_aggregator(name)(own, others)
    shares = get_shares(name)(own, others)
    for tensor in ("w", "b"):
        expected = sum(
            s * np.asarray(m[tensor], np.float64)
            for s, m in zip(shares, [own, *others], strict=True)
        )
        np.testing.assert_allclose(merged[tensor], expected, rtol=1e-5, atol=1e-6)


def test_mean_shares_follow_beta() -> None:
    own, *others = random_models(5)
    np.testing.assert_allclose(get_shares("mean", beta=0.2)(own, others), [0.2] + [0.2] * 4)
    np.testing.assert_allclose(
        get_shares("vc", beta=0.6, target="others")(own, others), [0.6] + [0.1] * 4
    )


def test_foolsgold_gives_identical_copies_no_share() -> None:
    own, honest = random_models(2)
    sybil = {"w": own["w"] + 5.0, "b": own["b"] - 3.0}
    shares = get_shares("foolsgold")(own, [honest, sybil, dict(sybil), dict(sybil)])
    assert shares[0] == pytest.approx(0.5) and shares[1] == pytest.approx(0.5)
    assert np.all(shares[2:] == 0.0)


def test_median_shares_count_the_coordinates_taken_from_each_input() -> None:
    # Odd count: coordinate 0's median is input 1's value, coordinate 1's input 2's.
    shares = median_shares(model(0.0, 5.0), [model(1.0, 9.0), model(7.0, 6.0)])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.5])
    # Even count: each of the two middle values gives half.
    shares = median_shares(model(0.0), [model(1.0), model(2.0), model(3.0)])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.5, 0.0])


def test_median_gives_an_outlier_nothing() -> None:
    own, *others = random_models(4)
    outlier = {"w": own["w"] + 100.0, "b": own["b"] + 100.0}
    assert median_shares(own, [*others, outlier])[-1] == 0.0


def test_trimmed_mean_shares_count_the_values_kept() -> None:
    values = [model(float(v), float(-v)) for v in range(5)]  # per coordinate: ranks reversed
    shares = trimmed_mean_shares(values[0], values[1:], trim=1)
    np.testing.assert_allclose(shares, [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(trimmed_mean_shares(values[0], values[1:], trim=0), [0.2] * 5)


def test_krum_shares_select_what_krum_returns() -> None:
    own, *others = random_models(5)
    others.append({"w": own["w"] * 50.0, "b": own["b"] * 50.0})
    merged = get_aggregator("krum")(own, others)
    shares = get_shares("krum")(own, others)
    chosen = int(np.argmax(shares))
    assert shares[chosen] == 1.0 and shares[-1] == 0.0
    np.testing.assert_allclose(merged["w"], [own, *others][chosen]["w"], rtol=1e-6)
    multi = get_shares("multi-krum", m=3)(own, others)
    assert np.count_nonzero(multi) == 3 and multi[-1] == 0.0


def test_unknown_rule_has_no_shares() -> None:
    with pytest.raises(ConfigError, match="unknown aggregator"):
        get_shares("nope")
