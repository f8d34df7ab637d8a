"""The data of the claims benchmark's Bristle baselines: Fashion-MNIST as the features of
Bristle's frozen extractor.

Bristle trains only an output layer on a frozen pretrained extractor. For the baselines
(average, median, Krum) to be compared on the same footing, they train the same linear
layer (``--model logreg``) on the same features: this loader gives the training split
*without* the held-out rows the extractor was pretrained on (the stratified 10% slice of
:mod:`gossiplearn.learning.pretrain`), in the same order as a Bristle run's peer data, so
that a partition with the same seed gives every peer the same samples; and the test
split, featurised. The extractor is the one a Bristle run with the same seed uses (cached
per machine, pretrained on first use).

    make_config(dataset=f"{FEATURES}", model="logreg", ...)
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from gossiplearn.learning.datasets import Dataset, load_dataset
from gossiplearn.learning.pretrain import extractor_for_run, transfer_setup

#: The dataset spec of the baselines (a path relative to the repository root).
FEATURES = "benchmarks/_bristle_features.py:fashion_mnist_features"
#: The model of Bristle's runs, whose layers under the output layer are the extractor.
EXTRACTOR_MODEL = "mlp"


def fashion_mnist_features(seed: int = 0) -> Dataset:
    data = load_dataset("fashion-mnist", seed=seed)
    notify = logging.getLogger("gossiplearn.bristle").warning
    transfer = transfer_setup(extractor_for_run(data, EXTRACTOR_MODEL, seed, None, notify), data)
    peers = transfer.peer_data

    def features(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            parts = [
                transfer.features(torch.from_numpy(x[i : i + 4096])).numpy()
                for i in range(0, len(x), 4096)
            ]
        return np.concatenate(parts).astype(np.float32)

    return Dataset(
        f"fashion-mnist-{EXTRACTOR_MODEL}-features",
        features(peers.train_x),
        peers.train_y,
        features(peers.test_x),
        peers.test_y,
        peers.num_classes,
    )
