"""Flatten a model's shared tensors into one float64 vector, and back.

Distance- and similarity-based rules (Krum, FoolsGold) compare whole models. They see
only the tensors that are aggregated: BN running statistics and integer buffers are left
out of the vector and keep the reference model's values on the way back.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation._tensors import is_local_statistic
from gossiplearn.types import Params


def shared_names(like: Params) -> list[str]:
    """Names of the tensors of ``like`` that are aggregated, in ``like``'s order."""
    return [name for name, value in like.items() if not is_local_statistic(name, value)]


def flatten(params: Params, like: Params) -> npt.NDArray[np.float64]:
    """The shared tensors of ``params`` (named and ordered as in ``like``), as one vector."""
    parts = []
    for name in shared_names(like):
        value = np.asarray(params[name], dtype=np.float64)
        if value.shape != like[name].shape:
            raise ValueError(
                f"tensor {name!r} has shape {value.shape}, expected {like[name].shape}"
            )
        parts.append(value.ravel())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def flatten_all(models: Sequence[Params], like: Params) -> npt.NDArray[np.float64]:
    """One row per model: ``flatten(model, like)`` stacked into an (n, d) matrix."""
    return np.stack([flatten(model, like) for model in models])


def unflatten(vector: npt.NDArray[np.float64], like: Params) -> Params:
    """Inverse of :func:`flatten`: shapes and dtypes of ``like``, its local statistics kept."""
    merged: Params = {}
    offset = 0
    for name, value in like.items():
        if is_local_statistic(name, value):
            merged[name] = value
            continue
        part = vector[offset : offset + value.size]
        merged[name] = part.reshape(value.shape).astype(value.dtype)
        offset += value.size
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} elements, the model needs {offset}")
    return merged


class FlatLayout:
    """Where each aggregated tensor of a model lives in one flat float64 row.

    Coordinate-wise rules (mean, vc, median, trimmed mean) work on a ``[k, P]`` matrix of
    k models with a handful of whole-matrix operations instead of a loop over tensors;
    per-tensor statistics (vc's variances) are reductions over each tensor's slice of a row.
    """

    def __init__(self, like: Params) -> None:
        self.names = shared_names(like)
        ends = list(itertools.accumulate(int(like[name].size) for name in self.names))
        #: name -> (start, end) of its coordinates in a row.
        self.slices = dict(zip(self.names, zip([0, *ends], ends, strict=False), strict=True))
        self.size = ends[-1] if ends else 0

    def stack(self, models: Sequence[Params]) -> npt.NDArray[np.float64]:
        """The shared tensors of each model as one ``[k, P]`` float64 matrix."""
        rows = np.empty((len(models), self.size), dtype=np.float64)
        for i, model in enumerate(models):
            for name, (start, end) in self.slices.items():
                rows[i, start:end] = np.asarray(model[name]).reshape(-1)
        return rows

    def unflatten(self, row: npt.NDArray[np.float64], like: Params) -> Params:
        """``row`` back into tensors shaped and typed as in ``like``; ``like``'s local
        statistics kept."""
        merged: Params = {}
        for name, value in like.items():
            if name not in self.slices:
                merged[name] = value
                continue
            start, end = self.slices[name]
            merged[name] = row[start:end].reshape(value.shape).astype(value.dtype)
        return merged

    def segment_var(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Per-tensor sample variance (ddof=1) of each row, two-pass: ``[..., T]``.

        Tensors with fewer than two elements get NaN (callers leave them alone). A loop
        over the tensors' views: ``np.add.reduceat`` over a ``[k, P]`` matrix and the
        temporaries of a repeated mean cost about ten times as much.
        """
        variances = np.full((*rows.shape[:-1], len(self.names)), np.nan)
        for i, (start, end) in enumerate(self.slices.values()):
            if end - start > 1:
                centred = rows[..., start:end] - self.segment_mean(rows, start, end)
                variances[..., i] = np.einsum("...i,...i->...", centred, centred) / (
                    end - start - 1
                )
        return variances

    @staticmethod
    def segment_mean(rows: npt.NDArray[np.float64], start: int, end: int) -> Any:
        """The mean of coordinates ``start:end`` of each row, kept as a trailing axis."""
        return rows[..., start:end].sum(axis=-1, keepdims=True) / (end - start)


def layout_of(like: Params) -> FlatLayout:
    """The (cached) layout for models shaped like ``like``."""
    key = tuple((name, value.shape, value.dtype.str) for name, value in like.items())
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _LAYOUTS[key] = FlatLayout(like)
    return layout


_LAYOUTS: dict[tuple[tuple[str, tuple[int, ...], str], ...], FlatLayout] = {}
