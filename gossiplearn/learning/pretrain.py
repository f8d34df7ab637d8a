"""Pretraining the frozen feature extractor of transfer-learning runs (Bristle).

What is held out: a stratified slice (``fraction`` of each class, default 10%) of the
dataset's *training* split, chosen with a generator seeded from ``seed`` alone. The
extractor is trained on those rows only, and a run that uses it gives its peers the
training split *without* them, so no peer ever holds a sample the extractor was trained
on. The test split is never trained on; it only reports the pretrained model's accuracy.
(Unlike the Bristle paper, which pretrains MNIST features on EMNIST letters, the held-out
rows here cover all classes: the extractor has seen a few labelled examples of each.)

An extractor file is a ``torch.save`` of plain tensors, numbers and strings, loaded with
``weights_only=True``: the full model's ``state_dict``, the held-out row indices and what
they were drawn from (dataset, model, a digest of the training labels), so that a run can
check the file fits its data and leave exactly those rows out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from gossiplearn.errors import ConfigError
from gossiplearn.learning.datasets import Dataset
from gossiplearn.learning.models import FrozenFeatureHead, build_model, build_transfer_model
from gossiplearn.learning.trainer import Learner

FORMAT = "gossiplearn-extractor"
VERSION = 1
DEFAULT_FRACTION = 0.1
#: Bumped whenever the default pretraining recipe changes, so stale cached files are not used.
RECIPE = 2
#: Separates the held-out draw from every other stream derived from the same seed.
_HOLDOUT_STREAM = 0x9E7A


@dataclass(frozen=True)
class PretrainSettings:
    fraction: float = DEFAULT_FRACTION
    epochs: int = 5
    #: Small held-out sets (digits) still get this many SGD steps.
    min_steps: int = 500
    lr: float = 0.01
    momentum: float = 0.9
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ConfigError(f"--holdout must be a fraction in (0, 1), got {self.fraction}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")


@dataclass(frozen=True, eq=False)
class Extractor:
    """A pretrained model and the training rows it was trained on."""

    dataset: str
    model: str
    state: dict[str, torch.Tensor]
    #: Indices into the training split that the extractor was trained on.
    holdout: npt.NDArray[np.int64]
    train_size: int
    labels_digest: str
    fraction: float
    seed: int
    test_accuracy: float

    def describe(self) -> str:
        return (
            f"{len(self.holdout)} of the {self.train_size} training samples of {self.dataset} "
            f"({self.fraction:.0%} of each class, seed {self.seed})"
        )


def labels_digest(labels: npt.NDArray[np.integer]) -> str:
    """A short fingerprint of a training split's labels (tells splits apart)."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()[:16]


def holdout_rows(
    labels: npt.NDArray[np.integer], fraction: float, seed: int
) -> npt.NDArray[np.int64]:
    """Sorted indices of ``fraction`` of each class (at least one sample per class)."""
    rng = np.random.default_rng([seed, _HOLDOUT_STREAM])
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        count = max(1, round(fraction * len(rows)))
        picked.append(rng.choice(rows, size=count, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def without_rows(data: Dataset, rows: npt.NDArray[np.int64]) -> Dataset:
    """``data`` with the given training rows removed (the test split unchanged)."""
    keep = np.ones(len(data.train_y), dtype=bool)
    keep[rows] = False
    return Dataset(
        data.name, data.train_x[keep], data.train_y[keep], data.test_x, data.test_y,
        data.num_classes,
    )  # fmt: skip


def pretrain(
    data: Dataset,
    model: str,
    *,
    seed: int,
    settings: PretrainSettings | None = None,
) -> Extractor:
    """Train model ``model`` on the held-out rows of ``data``'s training split."""
    settings = settings or PretrainSettings()
    rows = holdout_rows(data.train_y, settings.fraction, seed)
    x, y = torch.from_numpy(data.train_x[rows]), torch.from_numpy(data.train_y[rows])
    net = build_model(model, data.input_shape, data.num_classes, seed=seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum)
    loss = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    batch = min(settings.batch_size, len(rows))
    steps_per_epoch = -(-len(rows) // batch)
    steps = max(settings.epochs * steps_per_epoch, settings.min_steps)
    net.train()
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        start = (step % steps_per_epoch) * batch
        if start == 0:
            order = torch.randperm(len(rows), generator=generator)
        chosen = order[start : start + batch]
        optimizer.zero_grad(set_to_none=True)
        loss(net(x[chosen]), y[chosen]).backward()
        optimizer.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return Extractor(
        data.name, model, state, rows, len(data.train_y), labels_digest(data.train_y),
        settings.fraction, seed, _accuracy(net, data),
    )  # fmt: skip


@torch.no_grad()
def _accuracy(net: nn.Module, data: Dataset) -> float:
    net.eval()
    x, y = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    correct = sum(
        int((net(x[i : i + 2048]).argmax(dim=1) == y[i : i + 2048]).sum())
        for i in range(0, len(y), 2048)
    )
    return correct / max(1, len(y))


# ---- files ---------------------------------------------------------------------------


def save_extractor(extractor: Extractor, path: Path) -> None:
    """Write ``extractor`` to ``path`` (tensors, numbers and strings only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": extractor.dataset,
        "model": extractor.model,
        "state_dict": extractor.state,
        "holdout": torch.from_numpy(extractor.holdout),
        "train_size": extractor.train_size,
        "labels_digest": extractor.labels_digest,
        "fraction": extractor.fraction,
        "seed": extractor.seed,
        "test_accuracy": extractor.test_accuracy,
    }
    # One partial file per process: peers started together may cache the same extractor.
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(blob, partial)
    partial.replace(path)  # never leave a half-written file under the real name


def load_extractor(path: Path) -> Extractor:
    """Read an extractor file safely (``weights_only=True``); ConfigError if it is not one."""
    try:
        blob: Any = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConfigError(
            f"extractor file {path} not found; make one with gossiplearn pretrain"
        ) from None
    except Exception as error:  # torch raises many types for a file it cannot read safely
        raise ConfigError(f"extractor file {path} cannot be read safely: {error}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a gossiplearn extractor file (gossiplearn pretrain)")
    if blob.get("version") != VERSION:
        raise ConfigError(
            f"extractor file {path} has version {blob.get('version')}, need {VERSION}"
        )
    try:
        state = dict(blob["state_dict"])
        holdout = blob["holdout"].numpy().astype(np.int64)
        if not all(isinstance(t, torch.Tensor) for t in state.values()) or holdout.ndim != 1:
            raise TypeError("bad tensors")
        return Extractor(
            str(blob["dataset"]), str(blob["model"]), state, holdout, int(blob["train_size"]),
            str(blob["labels_digest"]), float(blob["fraction"]), int(blob["seed"]),
            float(blob["test_accuracy"]),
        )  # fmt: skip
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise ConfigError(f"extractor file {path} is incomplete or damaged ({error})") from None


def cache_dir() -> Path:
    """Where extractors pretrained on the fly are kept ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gossiplearn" / "extractors"


def cached_path(dataset: str, model: str, fraction: float, seed: int) -> Path:
    return cache_dir() / f"{dataset}-{model}-holdout{fraction:g}-seed{seed}-r{RECIPE}.pt"


# ---- what a run needs ----------------------------------------------------------------


def check_fits(extractor: Extractor, data: Dataset, model: str, source: str) -> None:
    """ConfigError unless ``extractor`` was pretrained on this training split and model."""
    problems = []
    if extractor.dataset != data.name:
        problems.append(f"it was pretrained on {extractor.dataset!r}, the run uses {data.name!r}")
    if extractor.model != model:
        problems.append(f"it is a {extractor.model!r} model, the run uses --model {model}")
    if (extractor.train_size, extractor.labels_digest) != (
        len(data.train_y),
        labels_digest(data.train_y),
    ):
        problems.append("its held-out rows come from another training split (digits: seed)")
    elif extractor.holdout.size and not (
        extractor.holdout.min() >= 0 and extractor.holdout.max() < len(data.train_y)
    ):
        problems.append("its held-out row indices are out of range")
    if problems:
        raise ConfigError(f"extractor {source} does not fit this run: " + "; ".join(problems))


def extractor_for_run(
    data: Dataset,
    model: str,
    seed: int,
    path: str | None,
    notify: Callable[[str], None],
) -> Extractor:
    """The extractor a run uses: the file at ``path``, else the one cached for this
    dataset, model and seed, pretrained now (and cached) when there is none."""
    if path is not None:
        extractor = load_extractor(Path(path).expanduser())
        check_fits(extractor, data, model, f"aggregator_params extractor={path}")
        return extractor
    cached = cached_path(data.name, model, DEFAULT_FRACTION, seed)
    if cached.is_file():
        extractor = load_extractor(cached)
        check_fits(extractor, data, model, str(cached))
        notify(
            f"bristle: using the extractor cached at {cached}, pretrained on {extractor.describe()}"
        )
        return extractor
    notify(
        f"bristle: no extractor given (aggregator_params extractor=PATH); pretraining a {model} "
        f"on a held-out {DEFAULT_FRACTION:.0%} of {data.name}'s training split, which no peer "
        f"gets, and caching it at {cached}"
    )
    extractor = pretrain(data, model, seed=seed)
    try:
        save_extractor(extractor, cached)
    except OSError as error:  # the run needs the extractor, not the cache
        notify(f"bristle: cannot cache the extractor at {cached} ({error}); using it uncached")
    notify(
        f"bristle: pretrained on {extractor.describe()}; "
        f"test accuracy {extractor.test_accuracy:.4f}"
    )
    return extractor


@dataclass(eq=False)
class Transfer:
    """A run's transfer-learning setup: the data its peers get and how models are built."""

    extractor: Extractor
    #: The dataset without the held-out rows: what the peers' partition splits.
    peer_data: Dataset

    def model(self) -> FrozenFeatureHead:
        """A fresh model: the frozen extractor under a zero head."""
        data = self.peer_data
        return build_transfer_model(
            self.extractor.model, data.input_shape, data.num_classes, self.extractor.state
        )

    @cached_property
    def _featurizer(self) -> FrozenFeatureHead:
        return self.model()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Extractor features [N, features] of images [N, C, H, W]."""
        return self._featurizer.features(images)

    def featurize(self, learners: Sequence[Learner]) -> None:
        """Give each learner its samples' features instead of their images, computed once
        here, so that training the head never runs the frozen extractor again."""
        for learner in learners:
            if learner.x.ndim == 4:
                learner.x = self.features(learner.x)


def transfer_setup(extractor: Extractor, data: Dataset) -> Transfer:
    return Transfer(extractor, without_rows(data, extractor.holdout))
