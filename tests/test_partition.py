"""Tests for gossiplearn.learning.partition."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.errors import ConfigError, DatasetError
from gossiplearn.learning.partition import parse_partition, partition

SPECS = ["iid", "dirichlet:0.1", "dirichlet:1", "dirichlet:100", "shards:1", "shards:2"]


def balanced_labels(num_classes: int = 10, per_class: int = 200) -> npt.NDArray[np.int64]:
    """Labels in shuffled order, ``per_class`` of each class."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(123).permutation(labels)


def check_invariants(parts: list[npt.NDArray[np.int64]], n: int, num_peers: int) -> None:
    assert len(parts) == num_peers
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert len(p) >= 1
        assert np.all(np.diff(p) > 0)  # sorted, no repeats within a peer
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)  # disjoint across peers
    assert everything.min() >= 0 and everything.max() < n


def classes_per_peer(labels: npt.NDArray[np.int64], parts: list[npt.NDArray[np.int64]]) -> float:
    return float(np.mean([len(np.unique(labels[p])) for p in parts]))


# --------------------------------------------------------------------------- parse_partition


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("iid", ("iid", None)),
        ("IID", ("iid", None)),
        ("dirichlet:0.5", ("dirichlet", 0.5)),
        ("dirichlet:1", ("dirichlet", 1.0)),
        ("dirichlet:1e-2", ("dirichlet", 0.01)),
        ("shards:2", ("shards", 2)),
        ("window:4", ("window", 4)),
    ],
)
def test_parse_valid_specs(spec: str, expected: tuple[str, float | int | None]) -> None:
    assert parse_partition(spec) == expected
    assert type(parse_partition(spec)[1]) is type(expected[1])


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "foo",
        "iid:3",
        "dirichlet",
        "dirichlet:",
        "dirichlet:abc",
        "dirichlet:-1",
        "dirichlet:0",
        "dirichlet:nan",
        "dirichlet:inf",
        "shards",
        "shards:0",
        "shards:-2",
        "shards:1.5",
        "shards:two",
        "window",
        "window:0",
        "window:2.5",
    ],
)
def test_parse_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match="is not valid: use iid, dirichlet:ALPHA"):
        parse_partition(spec)


def test_bad_spec_error_lists_window() -> None:
    with pytest.raises(ConfigError, match=r"window:K \(K >= 1\)"):
        parse_partition("windows:4")


def test_partition_rejects_bad_spec() -> None:
    with pytest.raises(ConfigError):
        partition(np.zeros(10, dtype=np.int64), "dirichlet:abc", 2, np.random.default_rng(0))


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("spec", SPECS)
def test_invariants_and_full_coverage(spec: str) -> None:
    labels = balanced_labels()
    parts = partition(labels, spec, 20, np.random.default_rng(0))
    check_invariants(parts, len(labels), 20)
    assert sum(len(p) for p in parts) == len(labels)  # every sample is used


@pytest.mark.parametrize("spec", SPECS)
def test_deterministic_given_seed(spec: str) -> None:
    labels = balanced_labels()
    a = partition(labels, spec, 13, np.random.default_rng(42))
    b = partition(labels, spec, 13, np.random.default_rng(42))
    c = partition(labels, spec, 13, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_are_even_and_classes_mixed() -> None:
    labels = balanced_labels()
    parts = partition(labels, "iid", 20, np.random.default_rng(0))
    assert {len(p) for p in parts} == {100}
    assert classes_per_peer(labels, parts) >= 9.5


def test_dirichlet_small_alpha_is_skewed() -> None:
    labels = balanced_labels()
    rng = np.random.default_rng(0)
    iid = classes_per_peer(labels, partition(labels, "iid", 20, rng))
    skewed = classes_per_peer(labels, partition(labels, "dirichlet:0.1", 20, rng))
    near_iid = classes_per_peer(labels, partition(labels, "dirichlet:100", 20, rng))
    assert skewed < 4 < iid - 5
    assert near_iid >= 9.5


def test_dirichlet_tiny_alpha_many_peers_still_fills_every_peer() -> None:
    # With alpha this small each class goes to ~one peer, so redraws cannot help:
    # the repair step must hand a sample to each of the other peers.
    labels = balanced_labels(num_classes=3, per_class=20)
    parts = partition(labels, "dirichlet:0.001", 50, np.random.default_rng(0))
    check_invariants(parts, len(labels), 50)
    assert sum(len(p) for p in parts) == len(labels)


def test_shards_limit_classes_per_peer() -> None:
    labels = balanced_labels(num_classes=10, per_class=200)
    # 50 peers * 2 shards = 100 shards of 20: aligned with classes, so one class per shard.
    parts = partition(labels, "shards:2", 50, np.random.default_rng(0))
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    # Unaligned shards may straddle one class boundary each: at most 2 classes per shard.
    parts = partition(labels, "shards:2", 30, np.random.default_rng(0))
    assert max(len(np.unique(labels[p])) for p in parts) <= 4
    assert classes_per_peer(labels, parts) < 3.5


def test_shards_one_gives_contiguous_label_runs() -> None:
    labels = balanced_labels(num_classes=10, per_class=10)
    parts = partition(labels, "shards:1", 10, np.random.default_rng(0))
    assert sorted(int(labels[p][0]) for p in parts) == list(range(10))
    assert all(len(np.unique(labels[p])) == 1 for p in parts)


# --------------------------------------------------------------------------- window:K


def test_window_gives_each_peer_its_class_window() -> None:
    labels = balanced_labels()
    parts = partition(labels, "window:4", 20, np.random.default_rng(0))
    check_invariants(parts, len(labels), 20)
    assert sum(len(p) for p in parts) == len(labels)  # 20 peers reach all 10 classes
    for peer, p in enumerate(parts):
        assert set(np.unique(labels[p]).tolist()) == {(peer + j) % 10 for j in range(4)}


def test_window_splits_each_class_evenly_among_its_holders() -> None:
    labels = balanced_labels()  # 200 per class, each held by 20 * 4 / 10 = 8 peers
    parts = partition(labels, "window:4", 20, np.random.default_rng(0))
    for p in parts:
        assert np.all(np.bincount(labels[p], minlength=10)[np.unique(labels[p])] == 25)


def test_window_with_fewer_peers_than_classes_leaves_classes_out() -> None:
    labels = balanced_labels()
    parts = partition(labels, "window:4", 3, np.random.default_rng(0))
    check_invariants(parts, len(labels), 3)
    held = set(np.unique(labels[np.concatenate(parts)]).tolist())
    assert held == set(range(6))  # windows 0-3, 1-4, 2-5


def test_window_deterministic_given_seed() -> None:
    labels = balanced_labels()
    a = partition(labels, "window:3", 13, np.random.default_rng(42))
    b = partition(labels, "window:3", 13, np.random.default_rng(42))
    c = partition(labels, "window:3", 13, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_window_wider_than_the_classes() -> None:
    with pytest.raises(DatasetError, match="window:11 gives each peer 11 classes"):
        partition(balanced_labels(), "window:11", 4, np.random.default_rng(0))


def test_window_peer_left_without_samples() -> None:
    labels = np.array([0, 1, 1, 1, 1], dtype=np.int64)  # class 0 has 1 sample, 2 holders
    with pytest.raises(DatasetError, match="without samples"):
        partition(labels, "window:1", 4, np.random.default_rng(0))


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("spec", ["iid", "dirichlet:1", "shards:1"])
def test_more_peers_than_samples(spec: str) -> None:
    with pytest.raises(DatasetError, match="only 5"):
        partition(np.arange(5) % 2, spec, 6, np.random.default_rng(0))


def test_too_many_shards() -> None:
    with pytest.raises(DatasetError, match="shards:3 with 4 peers needs at least 12"):
        partition(np.arange(10) % 2, "shards:3", 4, np.random.default_rng(0))


def test_zero_peers() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        partition(np.arange(10), "iid", 0, np.random.default_rng(0))


def test_labels_must_be_1d() -> None:
    with pytest.raises(DatasetError, match="1-D"):
        partition(np.zeros((4, 2), dtype=np.int64), "iid", 2, np.random.default_rng(0))


def test_one_peer_gets_everything() -> None:
    labels = balanced_labels(per_class=3)
    for spec in SPECS:
        (only,) = partition(labels, spec, 1, np.random.default_rng(0))
        np.testing.assert_array_equal(only, np.arange(len(labels)))


# --------------------------------------------------------------------------- property test


@st.composite
def partition_cases(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], str, int, int]:
    n = draw(st.integers(1, 150))
    num_classes = draw(st.integers(1, 6))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    num_peers = draw(st.integers(1, n))
    spec = draw(
        st.one_of(
            st.just("iid"),
            st.floats(0.001, 50.0).map(lambda a: f"dirichlet:{a}"),
            st.integers(1, 4).map(lambda k: f"shards:{k}"),
        )
    )
    seed = draw(st.integers(0, 2**32 - 1))
    return labels.astype(np.int64), spec, num_peers, seed


@settings(max_examples=150, deadline=None)
@given(partition_cases())
def test_partition_invariants_property(case: tuple[npt.NDArray[np.int64], str, int, int]) -> None:
    labels, spec, num_peers, seed = case
    if spec.startswith("shards:") and num_peers * int(spec.split(":")[1]) > len(labels):
        with pytest.raises(DatasetError):
            partition(labels, spec, num_peers, np.random.default_rng(seed))
        return
    parts = partition(labels, spec, num_peers, np.random.default_rng(seed))
    check_invariants(parts, len(labels), num_peers)
    assert sum(len(p) for p in parts) == len(labels)
