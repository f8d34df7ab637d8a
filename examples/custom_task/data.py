"""A user's own data loader: the Wisconsin breast-cancer table (569 rows, 30 features, two
classes) that scikit-learn ships, split and standardised here as a user would do it.

Named on the command line as ``path/to/data.py:load``; gossiplearn passes ``seed`` because
``load`` accepts it, so every peer of a run gets the same split.
"""

import numpy as np
from sklearn.datasets import load_breast_cancer


def load(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    table = load_breast_cancer()
    x = np.asarray(table.data, dtype=np.float32)
    y = np.asarray(table.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[: len(y) // 5], order[len(y) // 5 :]
    mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
    x = (x - mean) / std  # standardised with the training rows' statistics only
    return x[train], y[train], x[test], y[test]
