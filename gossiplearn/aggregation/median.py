"""Coordinate-wise median (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

Every coordinate of the merged model is the median of that coordinate over the own model
and the received ones (the own model is included: a peer trusts itself). Fewer than half
of the models, however extreme, cannot move a coordinate outside the range of the others.
Invariants: the result lies within the coordinate-wise min/max of the inputs; BN running
statistics and integer buffers keep their local values; dtypes are preserved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import flatten_all, layout_of
from gossiplearn.types import Params


def median(own: Params, received: Sequence[Params]) -> Params:
    """Coordinate-wise median over ``{own} ∪ received``, tensor by tensor.

    With an even number of models the two middle values are averaged. With no received
    models the own model is returned unchanged.
    """
    if not received:
        return dict(own)
    layout = layout_of(own)  # every tensor at once, as rows of one matrix
    return layout.unflatten(np.median(layout.stack([own, *received]), axis=0), own)


def coordinate_shares(
    own: Params, received: Sequence[Params], keep: slice
) -> npt.NDArray[np.float64]:
    """For rules that average, per coordinate, the values ranked ``keep`` among the inputs:
    the share of all aggregated coordinates' values taken from each input, own first."""
    values = flatten_all([own, *received], own)
    count, coordinates = values.shape
    kept = np.argsort(values, axis=0, kind="stable")[keep]
    if coordinates == 0 or kept.size == 0:
        return np.eye(count, 1, dtype=np.float64).ravel()
    taken = np.bincount(kept.ravel(), minlength=count).astype(np.float64)
    return taken / taken.sum()


def median_shares(own: Params, received: Sequence[Params]) -> npt.NDArray[np.float64]:
    """The share of the coordinates of :func:`median`'s result that came from each input,
    own first (with an even count, each of the two middle values gives half). Sums to 1."""
    count = 1 + len(received)
    middle = slice((count - 1) // 2, count // 2 + 1)
    return coordinate_shares(own, received, middle)
