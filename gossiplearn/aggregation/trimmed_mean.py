"""Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

For every coordinate, the values of the own model and the received ones are sorted, the
``trim`` largest and ``trim`` smallest are dropped and the rest averaged. Up to ``trim``
arbitrary (Byzantine) values per coordinate cannot pull the result outside the range of
the honest ones.

In gossip the number of received models changes from merge to merge (a low-degree peer,
a neighbour that went down), so a ``trim`` configured for the usual neighbourhood can be
too large for one merge. By default it is then clamped to ``(n − 1) // 2`` — which keeps
one or two middle values, i.e. degrades to the coordinate-wise median — rather than
failing the merge; ``strict=True`` raises instead.
Invariants: the result lies within the coordinate-wise min/max of the inputs; BN running
statistics and integer buffers keep their local values; dtypes are preserved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._flat import layout_of
from gossiplearn.aggregation.median import coordinate_shares
from gossiplearn.errors import ConfigError
from gossiplearn.types import Params


def resolve_trim(n: int, trim: int | None, *, strict: bool = False) -> int:
    """How many values to drop at each end for ``n`` models (see the module docstring)."""
    if trim is None:
        return n // 5  # floor(0.2·n): always 2·trim < n
    if trim < 0:
        raise ConfigError(f"trim must be ≥ 0, got {trim}")
    if 2 * trim >= n:
        if strict:
            raise ConfigError(f"trim={trim} drops all {n} models: need 2·trim < {n}")
        return (n - 1) // 2
    return trim


def trimmed_mean(
    own: Params, received: Sequence[Params], *, trim: int | None = None, strict: bool = False
) -> Params:
    """Coordinate-wise mean over ``{own} ∪ received`` without the ``trim`` extremes at each end.

    ``trim=None`` drops floor(0.2·n) at each end, n = 1 + len(received). A ``trim`` with
    2·trim ≥ n is clamped to (n − 1) // 2, or raises :class:`ConfigError` (a ValueError)
    when ``strict``. With no received models the own model is returned unchanged.
    """
    if trim is not None and trim < 0:
        raise ConfigError(f"trim must be ≥ 0, got {trim}")
    if not received:
        return dict(own)
    models = [own, *received]
    cut = resolve_trim(len(models), trim, strict=strict)
    layout = layout_of(own)  # every tensor at once, as rows of one matrix
    kept = np.sort(layout.stack(models), axis=0)[cut : len(models) - cut]
    # Clip only undoes rounding (a mean of equal floats can land one ulp outside).
    return layout.unflatten(np.clip(kept.mean(axis=0), kept[0], kept[-1]), own)


def trimmed_mean_shares(
    own: Params, received: Sequence[Params], *, trim: int | None = None, strict: bool = False
) -> npt.NDArray[np.float64]:
    """The share of the values averaged by :func:`trimmed_mean` that came from each input,
    over all aggregated coordinates, own first. Sums to 1."""
    count = 1 + len(received)
    cut = resolve_trim(count, trim, strict=strict)
    return coordinate_shares(own, received, slice(cut, count - cut))
