"""Variance-corrected averaging (Tian, Al-Ars, Kitsak, Hofstee, 2024).

Averaging n models that started from independent initialisations shrinks each layer's
variance by about 1/n, which stalls training. After the usual β-mix, each tensor is
rescaled around its mean so that its variance equals a target taken from the received
models ("follow others"), or a β-weighted blend with the own model ("conservative").
Invariants: per tensor (weight and bias separately), mean kept, BN running statistics
and tensors with one element left alone, identical inputs are a fixed point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import FlatLayout, layout_of
from gossiplearn.aggregation._tensors import check_beta
from gossiplearn.aggregation.clipping import clip_rows
from gossiplearn.types import Params

EPSILON = 1e-4


def variance_corrected(
    own: Params,
    received: Sequence[Params],
    *,
    beta: float = 0.5,
    target: Literal["others", "conservative"] = "others",
    epsilon: float = EPSILON,
    clip: bool = False,
) -> Params:
    """Merge like :func:`~gossiplearn.aggregation.mean` (``clip`` included), then restore
    each tensor's variance."""
    check_beta(beta)
    if target not in ("others", "conservative"):
        raise ValueError(f"target must be 'others' or 'conservative', got {target!r}")
    if not received:
        return dict(own)
    # All tensors at once: one [k, P] matrix, per-tensor statistics as segment reductions.
    layout = layout_of(own)
    models = layout.stack(received)
    own_row = layout.stack([own])[0]
    if clip:
        models = clip_rows(own_row, models)
    mixed = beta * own_row + (1.0 - beta) * models.mean(axis=0)
    wanted = layout.segment_var(models).mean(axis=0)
    if target == "conservative":
        wanted = beta * layout.segment_var(own_row) + (1.0 - beta) * wanted
    return layout.unflatten(_rescaled(layout, mixed, wanted, epsilon), own)


def restore_variance(
    merged: Params,
    own: Params,
    received: Sequence[Params],
    *,
    beta: float = 0.5,
    target: Literal["others", "conservative"] = "others",
    epsilon: float = EPSILON,
) -> Params:
    """Variance correction after any merge rule: rescale each tensor of ``merged`` around
    its mean to the variance of a typical received model.

    The target is the per-tensor *median* of the received models' variances (blended with
    the own model's by β for ``conservative``): after a Byzantine-robust rule, a minority
    of models with inflated or collapsed variance cannot set it. :func:`variance_corrected`
    keeps the mean, as its paper does.
    """
    check_beta(beta)
    if not received:
        return dict(merged)
    layout = layout_of(own)
    wanted = np.median(layout.segment_var(layout.stack(received)), axis=0)
    if target == "conservative":
        wanted = beta * layout.segment_var(layout.stack([own])[0]) + (1.0 - beta) * wanted
    return layout.unflatten(_rescaled(layout, layout.stack([merged])[0], wanted, epsilon), own)


Row = npt.NDArray[np.float64]


def _rescaled(layout: FlatLayout, row: Row, wanted: Row, epsilon: float) -> Row:
    """``row`` with each tensor rescaled around its mean to variance ``wanted``."""
    out = row.copy()  # a one-element tensor has no variance to restore: kept
    variances = layout.segment_var(row)
    for i, (start, end) in enumerate(layout.slices.values()):
        if end - start > 1:
            centre = layout.segment_mean(row, start, end)
            scale = np.sqrt((wanted[i] + epsilon) / (variances[i] + epsilon))
            out[start:end] = (row[start:end] - centre) * scale + centre
    return out
