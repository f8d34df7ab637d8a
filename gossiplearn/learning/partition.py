"""Splitting a dataset's samples among peers.

A partition spec string picks the scheme:

* ``iid`` — shuffle, then split into near-equal parts.
* ``dirichlet:ALPHA`` — label skew: for each class, the share of each peer is drawn from
  ``Dirichlet(ALPHA, ..., ALPHA)``. Small ALPHA (0.1) gives peers few classes; large ALPHA
  (100) is close to iid.
* ``shards:K`` — pathological non-iid of McMahan et al. (2017): sort by label, cut into
  ``num_peers * K`` shards, deal ``K`` random shards to each peer.
* ``window:K`` — the sliding class windows of Bristle (Verbraeken et al., 2021): with C
  classes, peer ``i`` holds the classes ``(i + j) mod C`` for ``j < K``, and the samples of
  each class are split evenly among the peers holding it. With fewer than C peers, classes
  no window reaches are left out.
* ``natural`` — the dataset's own groups (one speaker, user or device each), as LEAF
  splits its datasets: each peer gets the rows of one group, the groups drawn at random.

Every scheme returns disjoint, sorted int64 index arrays, one per peer, each non-empty, and
is deterministic given the generator's state.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import ConfigError, DatasetError

__all__ = ["parse_partition", "partition"]

IndexArray = npt.NDArray[np.int64]

# Dirichlet draws that leave a peer empty are redrawn this many times before we repair
# the last draw by hand; tiny ALPHA with many peers would otherwise loop for ever.
_DIRICHLET_REDRAWS = 10


def _bad_spec(spec: str) -> ConfigError:
    return ConfigError(
        f"partition spec {spec!r} is not valid: use iid, dirichlet:ALPHA (ALPHA > 0), "
        "shards:K (K >= 1), window:K (K >= 1) or natural"
    )


def parse_partition(spec: str) -> tuple[str, float | int | None]:
    """Validate a partition spec; return ``(scheme, parameter)``.

    ``"iid"`` -> ``("iid", None)``, ``"dirichlet:0.5"`` -> ``("dirichlet", 0.5)``,
    ``"shards:2"`` -> ``("shards", 2)``, ``"window:4"`` -> ``("window", 4)``. Raises
    :class:`ConfigError` otherwise.
    """
    scheme, sep, arg = spec.strip().lower().partition(":")
    if scheme in ("iid", "natural") and not sep:
        return (scheme, None)
    if scheme == "dirichlet" and arg:
        try:
            alpha = float(arg)
        except ValueError:
            raise _bad_spec(spec) from None
        if math.isfinite(alpha) and alpha > 0:
            return ("dirichlet", alpha)
    if scheme in ("shards", "window") and arg:
        try:
            k = int(arg)
        except ValueError:
            raise _bad_spec(spec) from None
        if k >= 1:
            return (scheme, k)
    raise _bad_spec(spec)


def partition(
    labels: npt.NDArray[np.integer],
    spec: str,
    num_peers: int,
    rng: np.random.Generator,
    groups: npt.NDArray[np.integer] | None = None,
) -> list[IndexArray]:
    """Split ``range(len(labels))`` among ``num_peers`` peers according to ``spec``.

    ``groups`` (one per row) are the dataset's natural groups, which ``natural`` needs.
    Returns one sorted int64 index array per peer; the arrays are disjoint and non-empty.
    Raises :class:`ConfigError` for a bad spec or peer count, and :class:`DatasetError` when
    the dataset is too small to give every peer a sample.
    """
    scheme, param = parse_partition(spec)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be a 1-D array, got shape {labels.shape}")
    if num_peers < 1:
        raise ConfigError(f"number of peers must be at least 1, got {num_peers}")
    if num_peers > len(labels):
        raise DatasetError(
            f"cannot give each of {num_peers} peers a sample: the dataset has only "
            f"{len(labels)}; use at most {len(labels)} peers"
        )
    if scheme == "iid":
        parts = _iid(len(labels), num_peers, rng)
    elif scheme == "natural":
        parts = _natural(groups, num_peers, rng)
    elif scheme == "dirichlet":
        assert isinstance(param, float)
        parts = _dirichlet(labels, param, num_peers, rng)
    elif scheme == "window":
        assert isinstance(param, int)
        parts = _window(labels, param, num_peers, rng)
    else:
        assert isinstance(param, int)
        parts = _shards(labels, param, num_peers, rng)
    return [np.sort(p).astype(np.int64, copy=False) for p in parts]


def _iid(n: int, num_peers: int, rng: np.random.Generator) -> list[IndexArray]:
    return list(np.array_split(rng.permutation(n).astype(np.int64), num_peers))


def _dirichlet_draw(
    labels: npt.NDArray[np.integer], alpha: float, num_peers: int, rng: np.random.Generator
) -> list[IndexArray]:
    """One label-skew draw; some peers may come back empty."""
    buckets: list[list[IndexArray]] = [[] for _ in range(num_peers)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls)).astype(np.int64)
        shares = rng.dirichlet(np.full(num_peers, alpha))
        # Cut points from the cumulative shares; the last one is len(idx) by construction.
        cuts = np.floor(np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for peer, chunk in enumerate(np.split(idx, np.clip(cuts, 0, len(idx)))):
            buckets[peer].append(chunk)
    return [np.concatenate(b) for b in buckets]


def _fill_empty(parts: list[IndexArray]) -> list[IndexArray]:
    """Give each empty peer one sample taken from the currently largest peer."""
    parts = list(parts)
    for peer, part in enumerate(parts):
        if len(part) == 0:
            # The largest holds >= 2 samples: there are at least as many samples as peers.
            donor = max(range(len(parts)), key=lambda i: len(parts[i]))
            parts[peer] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return parts


def _dirichlet(
    labels: npt.NDArray[np.integer], alpha: float, num_peers: int, rng: np.random.Generator
) -> list[IndexArray]:
    for _ in range(_DIRICHLET_REDRAWS):
        parts = _dirichlet_draw(labels, alpha, num_peers, rng)
        if min(len(p) for p in parts) > 0:
            return parts
    return _fill_empty(parts)


def _shards(
    labels: npt.NDArray[np.integer], k: int, num_peers: int, rng: np.random.Generator
) -> list[IndexArray]:
    num_shards = num_peers * k
    if num_shards > len(labels):
        raise DatasetError(
            f"shards:{k} with {num_peers} peers needs at least {num_shards} samples, the "
            f"dataset has {len(labels)}; use a smaller K or fewer peers"
        )
    # Shuffle before the stable sort so that samples within a class are in random order.
    shuffled = rng.permutation(len(labels)).astype(np.int64)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    order = rng.permutation(num_shards)
    return [
        np.concatenate([shards[s] for s in order[peer * k : (peer + 1) * k]])
        for peer in range(num_peers)
    ]


def _window(
    labels: npt.NDArray[np.integer], k: int, num_peers: int, rng: np.random.Generator
) -> list[IndexArray]:
    classes = np.unique(labels)
    num_classes = len(classes)
    if k > num_classes:
        raise DatasetError(
            f"window:{k} gives each peer {k} classes, the dataset has {num_classes}; "
            f"use K <= {num_classes}"
        )
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for peer in range(num_peers):
        for j in range(k):
            holders[(peer + j) % num_classes].append(peer)
    buckets: list[list[IndexArray]] = [[] for _ in range(num_peers)]
    for c, cls in enumerate(classes):
        if not holders[c]:
            continue
        idx = rng.permutation(np.flatnonzero(labels == cls)).astype(np.int64)
        for peer, chunk in zip(holders[c], np.array_split(idx, len(holders[c])), strict=True):
            buckets[peer].append(chunk)
    parts = [np.concatenate(b) for b in buckets]
    empty = [peer for peer, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DatasetError(
            f"window:{k} with {num_peers} peers leaves peer {empty[0]} without samples: "
            "its classes have fewer samples than peers holding them; use fewer peers"
        )
    return parts


def _natural(
    groups: npt.NDArray[np.integer] | None, num_peers: int, rng: np.random.Generator
) -> list[IndexArray]:
    if groups is None:
        raise ConfigError(
            "partition natural needs a dataset with natural groups (e.g. shakespeare, or an "
            ".npz with groups_train): use iid, dirichlet:ALPHA or shards:K for this one"
        )
    names, rows_of = np.unique(np.asarray(groups), return_inverse=True)
    if num_peers > len(names):
        raise DatasetError(
            f"partition natural gives each peer one of the dataset's {len(names)} groups: "
            f"use at most {len(names)} peers"
        )
    chosen = rng.choice(len(names), num_peers, replace=False)
    return [np.flatnonzero(rows_of == g).astype(np.int64) for g in chosen]
