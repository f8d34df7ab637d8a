"""Plain gossip averaging: θ' = β·θ_self + (1−β)·mean(received)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import layout_of
from gossiplearn.aggregation._tensors import check_beta, mix
from gossiplearn.aggregation.clipping import clip_rows
from gossiplearn.types import Params


def mean(
    own: Params, received: Sequence[Params], *, beta: float = 0.5, clip: bool = False
) -> Params:
    """Mix the own model with the average of the received ones, tensor by tensor.

    With ``clip``, received models are first clipped around the own one
    (:func:`~gossiplearn.aggregation.clipping.clip_rows`). BatchNorm running statistics
    and integer buffers keep their local values. With no received models the own model
    is returned unchanged.
    """
    check_beta(beta)
    if not received:
        return dict(own)
    layout = layout_of(own)  # every tensor at once, as rows of one matrix
    own_row, models = layout.stack([own])[0], layout.stack(received)
    if clip:
        models = clip_rows(own_row, models)
    return layout.unflatten(mix(own_row, models, beta), own)


def mean_shares(
    own: Params, received: Sequence[Params], *, beta: float = 0.5, **_: object
) -> npt.NDArray[np.float64]:
    """The share of each input in :func:`mean`'s result, own first: β, then (1−β)/n each
    (also variance-corrected averaging's: its rescale keeps the mix). Sums to 1."""
    check_beta(beta)
    if not received:
        return np.ones(1, dtype=np.float64)
    n = len(received)
    return np.array([beta] + [(1.0 - beta) / n] * n, dtype=np.float64)
