"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

The candidates are the own model and the received ones, each flattened to one vector of
its aggregated tensors. With f assumed Byzantine candidates among n, a candidate's score
is the sum of squared Euclidean distances to its n − f − 2 nearest other candidates:
a model inside the honest cluster has close neighbours, an outlier does not.
Krum returns the candidate with the lowest score; Multi-Krum averages the m lowest.

Gossip makes n vary between merges, so counts are clamped instead of failing: the number
of neighbours scored is kept within [1, n − 1] and m within [1, n]. Ties go to the
earlier candidate, and the own model comes first. BN running statistics and integer
buffers always keep the own values; dtypes are preserved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import flatten_all, unflatten
from gossiplearn.errors import ConfigError
from gossiplearn.types import Params


def resolve_byzantine(n: int, byzantine: int | None) -> int:
    """f: the given count, or floor((n − 3) / 2) (the most Krum tolerates), at least 0."""
    if byzantine is None:
        return max(0, (n - 3) // 2)
    if byzantine < 0:
        raise ConfigError(f"byzantine must be ≥ 0, got {byzantine}")
    return byzantine


def _squared_distances(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pairwise squared distances, from differences (exact for close models, unlike a Gram)."""
    n = len(vectors)
    distances = np.zeros((n, n), dtype=np.float64)
    for i in range(n - 1):
        diff = vectors[i + 1 :] - vectors[i]
        distances[i, i + 1 :] = np.einsum("ij,ij->i", diff, diff)
    return distances + distances.T


def krum_scores(
    vectors: npt.NDArray[np.floating], byzantine: int | None = None
) -> npt.NDArray[np.float64]:
    """Krum score of each row of an (n, d) matrix: lower is more central.

    score(i) = Σ of the squared distances to its n − f − 2 nearest other rows (kept in
    [1, n − 1]), f = :func:`resolve_byzantine`. A single row scores 0.
    """
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"vectors must be an (n, d) matrix, got shape {rows.shape}")
    n = len(rows)
    f = resolve_byzantine(n, byzantine)
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    nearest = min(max(n - f - 2, 1), n - 1)
    distances = _squared_distances(rows)
    np.fill_diagonal(distances, np.inf)  # a candidate is not its own neighbour
    return np.sort(distances, axis=1)[:, :nearest].sum(axis=1)


def krum(own: Params, received: Sequence[Params], *, byzantine: int | None = None) -> Params:
    """The candidate of ``{own} ∪ received`` with the lowest Krum score, as a whole model.

    ``byzantine`` is f, the number of Byzantine candidates to tolerate (None: the most
    Krum tolerates for this n). Local statistics come from the own model.
    """
    resolve_byzantine(0, byzantine)  # validate even when nothing was received
    if not received:
        return dict(own)
    vectors = flatten_all([own, *received], own)
    best = int(np.argmin(krum_scores(vectors, byzantine)))
    return dict(own) if best == 0 else unflatten(vectors[best], own)


def multi_krum(
    own: Params,
    received: Sequence[Params],
    *,
    byzantine: int | None = None,
    m: int | None = None,
) -> Params:
    """The mean of the ``m`` candidates of ``{own} ∪ received`` with the lowest Krum scores.

    ``m=None`` averages n − f candidates; m is clamped to [1, n]. Local statistics come
    from the own model.
    """
    resolve_byzantine(0, byzantine)
    if m is not None and m < 1:
        raise ConfigError(f"m must be ≥ 1, got {m}")
    if not received:
        return dict(own)
    vectors = flatten_all([own, *received], own)
    n = len(vectors)
    count = n - resolve_byzantine(n, byzantine) if m is None else m
    count = min(max(count, 1), n)
    chosen = np.argsort(krum_scores(vectors, byzantine), kind="stable")[:count]
    return unflatten(vectors[chosen].mean(axis=0), own)


def krum_shares(
    own: Params, received: Sequence[Params], *, byzantine: int | None = None
) -> npt.NDArray[np.float64]:
    """1 for the input :func:`krum` selects, 0 for the others, own first."""
    vectors = flatten_all([own, *received], own)
    shares = np.zeros(len(vectors), dtype=np.float64)
    shares[int(np.argmin(krum_scores(vectors, byzantine)))] = 1.0
    return shares


def multi_krum_shares(
    own: Params,
    received: Sequence[Params],
    *,
    byzantine: int | None = None,
    m: int | None = None,
) -> npt.NDArray[np.float64]:
    """1/m for each of the m inputs :func:`multi_krum` averages, 0 for the others, own
    first."""
    vectors = flatten_all([own, *received], own)
    n = len(vectors)
    count = n - resolve_byzantine(n, byzantine) if m is None else m
    count = min(max(count, 1), n)
    chosen = np.argsort(krum_scores(vectors, byzantine), kind="stable")[:count]
    shares = np.zeros(n, dtype=np.float64)
    shares[chosen] = 1.0 / count
    return shares
