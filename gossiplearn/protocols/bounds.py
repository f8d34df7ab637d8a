"""Received models are judged against the receiver's own model, not only for NaN and Inf.

Every float tensor that merges average may hold values up to ``factor`` times the largest
magnitude of the same tensor in the own model (at least 1, so that tensors that start at
zero can grow). Honest models of one run stay within a small multiple of each other; a
model of 1e30s, which averaging would spread and gradients could not pull back, does not.
The bound on magnitude also bounds the distance from the own model, to ``factor + 1``
times that magnitude per coordinate. BatchNorm statistics and integer buffers stay local
in every merge, so they are not judged.
"""

from __future__ import annotations

import numpy as np

from gossiplearn.aggregation._tensors import is_local_statistic
from gossiplearn.errors import ModelOutOfRange
from gossiplearn.types import Params

#: No honest model of a run comes near 100x the own model's largest value.
DEFAULT_FACTOR = 100.0


class ModelBounds:
    """The magnitude each tensor of a received model may reach, from the own model."""

    def __init__(self, own: Params, factor: float = DEFAULT_FACTOR) -> None:
        self.factor = factor
        self.limits: dict[str, float] = {}
        self.update(own)

    def update(self, own: Params) -> None:
        """Bounds from the own model as it is now (after a round)."""
        self.limits = {
            name: self.factor * max(1.0, float(np.abs(value).max()) if value.size else 1.0)
            for name, value in own.items()
            if not is_local_statistic(name, np.asarray(value))
        }

    def check(self, params: Params) -> None:
        """Raise :class:`ModelOutOfRange` if a tensor of ``params`` is beyond its bound."""
        for name, limit in self.limits.items():
            value = params.get(name)
            if value is None or value.size == 0:
                continue
            peak = float(np.abs(value).max())
            if peak > limit:
                raise ModelOutOfRange(
                    f"tensor {name!r} reaches {peak:.3g}, beyond {limit:.3g} "
                    f"({self.factor:g}x the own model's largest value)"
                )
