"""Bristle's integrator (ALGORITHMS.md §4): pure functions over output-layer matrices.

Bristle exchanges only a classifier head ``W`` (features × classes; a bias, if any, is one
more row). A peer merges the heads it received in two stages:

1. a fast distance-based *prioritiser* picks at most ``candidates`` heads, mostly near its
   own but some far ones (explore/exploit over the thirds of the sorted distances);
2. a performance-based *integrator* scores each picked head per class by its F1 on the
   peer's own small validation set, and merges column by column: familiar classes (those
   in the local data) with per-class weights, foreign classes with one weight per peer.

Everything here is numpy; random choices come from the caller's generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossiplearn.types import Params, PeerId

Matrix = npt.NDArray[np.float64]

#: Bounded scores never go below this (per-class weights); the foreign weight uses the sum
#: of the unbounded scores.
SCORE_FLOOR = -100.0


# ---- the head as a matrix ----------------------------------------------------------------


def head_matrix(params: Params, weight: str, bias: str | None) -> Matrix:
    """The head as ``W`` [features (+1 bias row), classes] from a linear layer's
    ``weight`` [classes, features] (and ``bias`` [classes])."""
    w = np.asarray(params[weight], dtype=np.float64).T
    if bias is None:
        return np.array(w)
    return np.vstack([w, np.asarray(params[bias], dtype=np.float64)[np.newaxis, :]])


def head_params(matrix: Matrix, like: Params, weight: str, bias: str | None) -> Params:
    """The inverse of :func:`head_matrix`, in the dtypes of ``like`` (other tensors kept)."""
    out = dict(like)
    rows = matrix[:-1] if bias is not None else matrix
    out[weight] = np.ascontiguousarray(rows.T, dtype=like[weight].dtype)
    if bias is not None:
        out[bias] = np.asarray(matrix[-1], dtype=like[bias].dtype)
    return out


def predict(
    matrix: Matrix, features: npt.NDArray[np.floating], bias: bool
) -> npt.NDArray[np.int64]:
    """The class each feature row is given by head ``matrix`` (argmax of the logits)."""
    logits = np.asarray(features, dtype=np.float64) @ (matrix[:-1] if bias else matrix)
    if bias:
        logits += matrix[-1]
    return np.asarray(logits.argmax(axis=1), dtype=np.int64)


def f1_per_class(
    predictions: npt.NDArray[np.integer], labels: npt.NDArray[np.integer], classes: Sequence[int]
) -> dict[int, float]:
    """F1 = 2·TP / (2·TP + FP + FN) of each of ``classes`` (0 when the class never occurs in
    labels nor predictions)."""
    scores = {}
    for c in classes:
        tp = int(np.sum((predictions == c) & (labels == c)))
        fp = int(np.sum((predictions == c) & (labels != c)))
        fn = int(np.sum((predictions != c) & (labels == c)))
        scores[c] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return scores


# ---- stage 1: the distance-based prioritiser ---------------------------------------------


def selection_counts(alpha: float, candidates: int) -> tuple[int, int, int]:
    """Models to draw from the near, middle and far thirds: round((1−α)²N), round(2α(1−α)N),
    round(α²N), rounding halves up (α = 0.4, N = 10 gives 4, 5, 2)."""
    shares = ((1 - alpha) ** 2, 2 * alpha * (1 - alpha), alpha**2)
    near, middle, far = (math.floor(s * candidates + 0.5) for s in shares)
    return near, middle, far


def prioritise(
    own: Matrix,
    others: Mapping[PeerId, Matrix],
    rng: np.random.Generator,
    *,
    alpha: float = 0.4,
    candidates: int = 10,
) -> list[PeerId]:
    """The peers whose heads go on to the integrator, nearest (Euclidean) first.

    With at most ``candidates`` heads all are taken. Otherwise the heads, sorted by
    distance to ``own``, are cut into thirds (near ``n//3``, middle, far ``n//3``) and
    :func:`selection_counts` heads are drawn at random from each (4 + 5 + 2 for the
    defaults: the counts are rounded separately, as published). A third too small to give
    its count gives all it has, and the nearest heads not yet taken make up the shortfall.
    """
    ids = list(others)
    distances = [float(np.linalg.norm(own - others[p])) for p in ids]
    order = [ids[i] for i in np.argsort(distances, kind="stable")]
    if len(order) <= candidates:
        return order
    counts = selection_counts(alpha, candidates)
    n, third = len(order), len(order) // 3
    groups = (order[:third], order[third : n - third], order[n - third :])
    chosen: set[PeerId] = set()
    for group, count in zip(groups, counts, strict=True):
        picks = rng.choice(len(group), size=min(count, len(group)), replace=False)
        chosen.update(group[int(i)] for i in picks)
    wanted = min(sum(counts), n)
    for peer in order:  # make up a shortfall with the nearest heads not taken
        if len(chosen) >= wanted:
            break
        chosen.add(peer)
    return [p for p in order if p in chosen]


# ---- stage 2: the performance-based integrator -------------------------------------------


def class_score(f1_me: float, f1_peer: float, *, bounded: bool) -> float:
    """diff = 10·|F1_me − F1_p|; diff^(3 + F1_me) if the peer is better on the class, else
    −diff^(4 + F1_me); bounded scores are at least :data:`SCORE_FLOOR`."""
    diff = 10.0 * abs(f1_me - f1_peer)
    score = diff ** (3 + f1_me) if f1_peer > f1_me else -(diff ** (4 + f1_me))
    return max(SCORE_FLOOR, score) if bounded else score


def certainty(f1s: Sequence[float]) -> float:
    """max(0, mean − std) of a peer's F1 over its considered classes (population std)."""
    values = np.asarray(f1s, dtype=np.float64)
    return max(0.0, float(values.mean() - values.std())) if len(values) else 0.0


def score_weight(score: float, peer_certainty: float) -> float:
    """max(0, 10·sigmoid(score / 100) − 4) · certainty."""
    x = score / 100.0
    # Stable sigmoid: exp never overflows for large negative unbounded scores.
    sigmoid = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
    return max(0.0, 10.0 * sigmoid - 4.0) * peer_certainty


def top_classes(f1s: Mapping[int, float], overlap: int) -> list[int]:
    """The ``overlap`` classes a peer does best on (all of them when ``overlap`` is 0 or at
    least their number); ties go to the lower class."""
    ranked = sorted(f1s, key=lambda c: (-f1s[c], c))
    return ranked if overlap <= 0 or overlap >= len(ranked) else ranked[:overlap]


@dataclass
class PeerAssessment:
    """What the integrator concluded about one peer's head."""

    f1: dict[int, float]
    considered: list[int]
    certainty: float
    #: Weight of its column for each familiar class (0 for classes not considered).
    class_weights: dict[int, float]
    #: Its weight for every foreign column.
    foreign_weight: float


def assess(
    f1_me: Mapping[int, float], f1_peer: Mapping[int, float], overlap: int
) -> PeerAssessment:
    """Score, certainty and weights of one peer from the per-class F1 of both heads."""
    considered = top_classes(f1_peer, overlap)
    sure = certainty([f1_peer[c] for c in considered])
    weights = dict.fromkeys(f1_me, 0.0)
    unbounded = 0.0
    for c in considered:
        weights[c] = score_weight(class_score(f1_me[c], f1_peer[c], bounded=True), sure)
        unbounded += class_score(f1_me[c], f1_peer[c], bounded=False)
    return PeerAssessment(dict(f1_peer), considered, sure, weights, score_weight(unbounded, sure))


def merge_columns(
    own: Matrix,
    heads: Mapping[PeerId, Matrix],
    assessments: Mapping[PeerId, PeerAssessment],
    familiar: Sequence[int],
) -> tuple[Matrix, Matrix]:
    """Column-wise weighted means: own column weight 1, peer p weight w_{p,c} on familiar
    columns and u_p on foreign ones. Returns the merged matrix and the weights [peers,
    classes] (rows in ``heads`` order)."""
    columns = list(familiar)
    weights = np.zeros((len(heads), own.shape[1]))
    for row, peer in enumerate(heads):
        a = assessments[peer]
        weights[row] = a.foreign_weight
        weights[row, columns] = [a.class_weights.get(c, 0.0) for c in columns]
    total = own.copy()
    for row, peer in enumerate(heads):
        total += heads[peer] * weights[row]
    return total / (1.0 + weights.sum(axis=0)), weights


def center_columns(matrix: Matrix, bias: bool) -> Matrix:
    """Subtract from each column the mean of its weight entries (the bias row, if any, is
    left as it is)."""
    out = matrix.copy()
    rows = out[:-1] if bias else out
    rows -= rows.mean(axis=0, keepdims=True)
    return out


@dataclass
class BristleMerge:
    """The merged head and how much each peer contributed to it."""

    matrix: Matrix
    #: Selected peers' share of the merged head: per column w / (1 + Σ w), averaged over
    #: all columns; the own head has the rest. Peers not selected have share 0.
    shares: dict[PeerId, float] = field(default_factory=dict)
    assessments: dict[PeerId, PeerAssessment] = field(default_factory=dict)
    own_f1: dict[int, float] = field(default_factory=dict)


def integrate(
    own: Matrix,
    heads: Mapping[PeerId, Matrix],
    features: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    *,
    bias: bool,
    overlap: int = 3,
    center: bool = True,
) -> BristleMerge:
    """Bristle's performance-based integration of ``heads`` into ``own``.

    ``features``/``labels`` are the peer's validation set; its familiar classes are the
    labels that occur in it. Every peer in ``heads`` gets a share (0 when its weights are).
    """
    familiar = sorted(int(c) for c in np.unique(labels))
    own_f1 = f1_per_class(predict(own, features, bias), labels, familiar)
    assessments = {
        p: assess(own_f1, f1_per_class(predict(w, features, bias), labels, familiar), overlap)
        for p, w in heads.items()
    }
    merged, weights = merge_columns(own, heads, assessments, familiar)
    if center:
        merged = center_columns(merged, bias)
    shares_per_column = weights / (1.0 + weights.sum(axis=0))
    shares = {p: float(s) for p, s in zip(heads, shares_per_column.mean(axis=1), strict=True)}
    return BristleMerge(merged, shares, assessments, own_f1)
