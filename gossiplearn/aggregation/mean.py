"""Plain gossip averaging: θ' = β·θ_self + (1−β)·mean(received)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._tensors import check_beta, is_local_statistic, mix, stack
from gossiplearn.types import Params


def mean(own: Params, received: Sequence[Params], *, beta: float = 0.5) -> Params:
    """Mix the own model with the average of the received ones, tensor by tensor.

    BatchNorm running statistics and integer buffers keep their local values. With no
    received models the own model is returned unchanged.
    """
    check_beta(beta)
    if not received:
        return dict(own)
    merged: Params = {}
    for name, value in own.items():
        if is_local_statistic(name, value):
            merged[name] = value
        else:
            merged[name] = mix(value, stack(received, name), beta).astype(value.dtype)
    return merged


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
