"""FoolsGold (Fung, Yoon, Beschastnikh, RAID 2020; arXiv 2018), as reused by SybilWall.

Sybils controlled by one attacker push the same poisoned direction, so their updates are
far more alike than those of honest peers with their own data. FoolsGold gives each
update a weight that falls as its largest cosine similarity to another update rises:
identical updates get weight 0, dissimilar ones weight 1 (scoring: ALGORITHMS.md §3,
step 5, and :func:`foolsgold_weights`).

Here a peer keeps no history, so the updates are the received models relative to the
own model, Δ_i = θ_i − θ_own over the aggregated tensors. The merge is
(θ_own + Σ w_i θ_i) / (1 + Σ w_i): the own model has weight 1, as in SybilWall. If all
received models are identical (all weights 0) the own model is returned.
Invariants: the result is a convex combination of the inputs; BN running statistics and
integer buffers keep their local values; dtypes are preserved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import flatten, flatten_all, unflatten
from gossiplearn.types import Params

# 1 − cos of identical vectors is a few ulps, not 0; weights below this are taken as 0.
_ROUNDING = 1e-9
# Logit offset: w → ln(w / (1 − w)) + 0.5 (κ = 1 in the paper).
_LOGIT_OFFSET = 0.5
#: Near-copies (:func:`one_per_copy`): a tenth of a typical row's distance to its nearest.
#: Measured in the robustness grid (Fashion-MNIST dirichlet:0.1, shared init): at 0.378
#: (FoolsGold's logit zero) honest peers alike each other lost 0.56 of 5.84 models a
#: merge beside 30% noise attackers, at 0.1 0.20, and identical Sybils count once either way.
COPY_DISTANCE = 0.1


def _cosine_similarity(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pairwise cosine similarity; a zero vector has similarity 0 to everything."""
    gram = vectors @ vectors.T
    norms = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    scale = np.outer(norms, norms)
    cosine = np.divide(gram, scale, out=np.zeros_like(gram), where=scale > 0)
    return np.clip(cosine, -1.0, 1.0)


def _rows(
    vectors: npt.NDArray[np.floating], candidates: int | None
) -> tuple[npt.NDArray[np.float64], int]:
    """``vectors`` as a float64 (n, d) matrix, and how many of its rows are candidates."""
    rows = np.asarray(vectors, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"vectors must be an (n, d) matrix, got shape {rows.shape}")
    count = len(rows) if candidates is None else candidates
    if not 0 <= count <= len(rows):
        raise ValueError(f"candidates must be in [0, {len(rows)}], got {candidates}")
    return rows, count


def foolsgold_weights(
    vectors: npt.NDArray[np.floating], *, candidates: int | None = None
) -> npt.NDArray[np.float64]:
    """FoolsGold weight in [0, 1] of each row of an (n, d) matrix of updates or histories.

    cs = cosine similarity minus identity; v_i = max_j cs_ij; pardoning: cs_ij ← cs_ij·v_i/v_j
    where v_i < v_j; w_i = clip(1 − max_j cs_ij, 0, 1); w ← w / max(w) (all-zero stays 0);
    w ← ln(w / (1 − w)) + 0.5 with w = 1 → 1 and w = 0 → 0; clip to [0, 1].

    With ``candidates=k`` only the first k rows are weighed (the models to merge); the
    other rows (SybilWall's distant histories) take part in the similarity matrix only,
    and the rescale w / max(w) runs over the k candidates. Otherwise one stale, dissimilar
    history would set max(w) and push every candidate's weight to 0. Returns k weights.
    """
    rows, count = _rows(vectors, candidates)
    cs = _cosine_similarity(rows)
    np.fill_diagonal(cs, 0.0)  # "minus identity", exactly
    v = cs.max(axis=1, initial=0.0)  # ≥ 0 anyway: the diagonal is in each row
    # Pardoning: an honest update that resembles a Sybil cluster is not punished as hard.
    # v_i < v_j implies v_j > 0, so the ratio is defined wherever it is used.
    ratio = np.divide(v[:, None], v[None, :], out=np.ones_like(cs), where=v[None, :] > 0)
    cs = np.where(v[:, None] < v[None, :], cs * ratio, cs)
    w = np.clip(1.0 - cs.max(axis=1, initial=0.0), 0.0, 1.0)[:count]
    w[w < _ROUNDING] = 0.0
    top = w.max(initial=0.0)
    if top == 0.0:
        return w
    w = w / top
    # Logit with its ends pinned: computed only strictly inside (0, 1).
    inside = (w > 0.0) & (w < 1.0)
    logit = np.where(w >= 1.0, 1.0, 0.0)
    logit[inside] = np.log(w[inside] / (1.0 - w[inside])) + _LOGIT_OFFSET
    return np.clip(logit, 0.0, 1.0)


def one_per_copy(
    vectors: npt.NDArray[np.floating], *, candidates: int | None = None
) -> npt.NDArray[np.bool_]:
    """Which of the (first ``candidates``) rows a chain hands to its Byzantine-robust rule
    (``sybilwall+median``): every row but near-copies of a row kept before it, so that a
    group of Sybils counts as one sender.

    Two rows are near-copies when their cosine distance 1 − cs_ij is at most
    :data:`COPY_DISTANCE` times the median, over the candidates, of each row's distance to
    its nearest other row (the rows after the candidates count as neighbours only), or
    exactly alike when that median is 0. Judged against a typical row rather than
    FoolsGold's rescale to the most unusual one: an attacker sending noise is more unusual
    than any honest peer, and relative to it every honest weight would fall to 0. Honest
    peers holding much the same data are sometimes alike too; they then count once, where
    a filter on FoolsGold's weights would leave out both.
    """
    rows, count = _rows(vectors, candidates)
    distance = 1.0 - _cosine_similarity(rows)
    np.fill_diagonal(distance, np.inf)
    nearest = distance.min(axis=1, initial=np.inf)[:count]
    typical = float(np.median(nearest)) if count else 0.0
    near = distance[:count, :count] <= max(COPY_DISTANCE * typical, _ROUNDING)
    keep = np.ones(count, dtype=bool)
    for i in range(count):
        if keep[i]:
            keep[i + 1 :] &= ~near[i, i + 1 :]
    return keep


def foolsgold(own: Params, received: Sequence[Params]) -> Params:
    """Weighted mean of ``{own} ∪ received``: own weight 1, received ones FoolsGold weights.

    The weights come from :func:`foolsgold_weights` over Δ_i = θ_i − θ_own. With no
    received models the own model is returned unchanged.
    """
    if not received:
        return dict(own)
    base = flatten(own, own)
    models = flatten_all(received, own)
    weights = foolsgold_weights(models - base)
    merged = (base + weights @ models) / (1.0 + weights.sum())
    return unflatten(merged, own)


def foolsgold_shares(own: Params, received: Sequence[Params]) -> npt.NDArray[np.float64]:
    """The share of each input in :func:`foolsgold`'s result, own first:
    [1, w_1, …, w_n] / (1 + Σ w). Sums to 1."""
    if not received:
        return np.ones(1, dtype=np.float64)
    base = flatten(own, own)
    weights = foolsgold_weights(flatten_all(received, own) - base)
    return np.concatenate([[1.0], weights]) / (1.0 + weights.sum())
