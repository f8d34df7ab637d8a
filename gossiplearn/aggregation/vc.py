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

from gossiplearn.aggregation._flat import layout_of
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
    rescaled = layout.sizes > 1  # a one-element tensor has no variance to restore
    centre = np.where(rescaled, layout.segment_sums(mixed) / np.maximum(layout.sizes, 1), 0.0)
    scale = np.sqrt((wanted + epsilon) / (layout.segment_var(mixed) + epsilon))
    scale = np.where(rescaled, scale, 1.0)
    mixed = (mixed - layout.expand(centre)) * layout.expand(scale) + layout.expand(centre)
    return layout.unflatten(mixed, own)
