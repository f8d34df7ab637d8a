"""Defences of a merge against one hostile model: self-centred clipping, the magnitude
bound against the own model, and the quarantine of senders rejected again and again."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.aggregation import get_aggregator
from gossiplearn.aggregation.clipping import clip_rows
from gossiplearn.errors import ModelOutOfRange
from gossiplearn.peer.quarantine import MAX_TRACKED, Quarantine
from gossiplearn.protocols.bounds import ModelBounds
from gossiplearn.types import Params


def model(*values: float) -> Params:
    return {"w": np.array(values, np.float32), "b": np.zeros(1, np.float32)}


def test_clipping_pulls_outliers_to_the_lower_median_distance() -> None:
    own = np.zeros(2)
    received = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [1e30, 0.0]])
    clipped = clip_rows(own, received)
    np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), [2.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(clipped[0], [1.2, 1.6])  # direction kept
    np.testing.assert_array_equal(clipped[1:3], received[1:3])  # at or below τ: unchanged


def test_clipping_leaves_a_single_model_and_identical_models_alone() -> None:
    own = np.ones(3)
    np.testing.assert_array_equal(clip_rows(own, np.array([[9.0, 9.0, 9.0]])), [[9, 9, 9]])
    np.testing.assert_array_equal(clip_rows(own, np.ones((2, 3))), np.ones((2, 3)))
    assert clip_rows(own, np.zeros((0, 3))).shape == (0, 3)


@pytest.mark.parametrize("rule", ["mean", "vc"])
def test_one_byzantine_model_moves_a_clipped_merge_by_a_bounded_step(rule: str) -> None:
    rng = np.random.default_rng(0)
    own = {"w": rng.normal(size=50).astype(np.float32)}
    honest = [{"w": own["w"] + rng.normal(scale=0.1, size=50).astype(np.float32)} for _ in range(3)]
    byzantine = {"w": np.full(50, 1e30, np.float32)}
    clipped = get_aggregator(rule, beta=0.5, clip=True)(own, [*honest, byzantine])
    plain = get_aggregator(rule, beta=0.5, clip=False)(own, [*honest, byzantine])
    honest_spread = max(np.linalg.norm(h["w"] - own["w"]) for h in honest)
    assert np.linalg.norm(clipped["w"] - own["w"]) < 2 * honest_spread
    assert np.abs(plain["w"]).max() > 1e28  # without clipping, the merge is the attacker's


def test_bounds_refuse_values_far_beyond_the_own_model() -> None:
    bounds = ModelBounds(model(0.5, -2.0))
    bounds.check(model(150.0, -199.0))  # within 100x the own largest value (2)
    with pytest.raises(ModelOutOfRange, match="'w' reaches 1e\\+30"):
        bounds.check(model(1e30, 0.0))
    with pytest.raises(ModelOutOfRange, match="'b'"):
        bounds.check({"w": np.zeros(2, np.float32), "b": np.array([101.0], np.float32)})
    bounds.update(model(10.0, 0.0))  # the own model grew: so does the bound
    bounds.check(model(999.0, 0.0))


def test_bounds_leave_local_statistics_and_integer_buffers_alone() -> None:
    own = {"bn.running_var": np.ones(2, np.float32), "steps": np.array([3], np.int64)}
    ModelBounds(own).check({"bn.running_var": np.full(2, 1e9, np.float32), "steps": 2**62})  # type: ignore[dict-item]


def test_quarantine_after_strikes_in_a_row_and_for_a_while() -> None:
    quarantine = Quarantine(strikes=3, seconds=10.0)
    assert not quarantine.strike("a", 0.0)
    quarantine.forgive("a")  # a valid model in between: strikes start again
    assert not quarantine.strike("a", 1.0) and not quarantine.strike("a", 2.0)
    assert quarantine.strike("a", 3.0)
    assert quarantine.holds("a", 12.9) and not quarantine.holds("b", 5.0)
    assert not quarantine.holds("a", 13.0) and len(quarantine) == 0


def test_quarantine_memory_is_bounded_across_identities() -> None:
    quarantine = Quarantine(strikes=1, seconds=1e9)
    for i in range(MAX_TRACKED + 100):
        quarantine.strike(f"id-{i}", 0.0)
    assert len(quarantine) == MAX_TRACKED
    assert not quarantine.holds("id-0", 1.0)  # the least recent went first
