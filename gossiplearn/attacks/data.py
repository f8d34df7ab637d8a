"""Data poisoning: what an attacker trains on.

- label flip A→B: every sample of class A is labelled B (with non-iid shards an attacker
  may hold few or no samples of class A: :func:`add_source_samples` gives it some, as a
  real attacker would collect them);
- label flip all: every label y becomes C−1−y;
- backdoor: a 3x3 white trigger patch (value 1.0; our datasets are scaled to [0, 1]) in
  the bottom-right corner of a fraction
  of the attacker's samples, all relabelled TARGET (BadNets, Gu et al. 2017).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gossiplearn.attacks.spec import Attack

Images = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

TRIGGER_SIZE = 3
TRIGGER_VALUE = 1.0


def add_trigger(x: Images) -> Images:
    """A copy of images ``[N, C, H, W]`` with the trigger patch stamped on."""
    stamped = x.copy()
    stamped[..., -TRIGGER_SIZE:, -TRIGGER_SIZE:] = TRIGGER_VALUE
    return stamped


def poison_data(
    attack: Attack,
    x: Images,
    y: Labels,
    num_classes: int,
    rng: np.random.Generator,
    *,
    backdoor_fraction: float = 0.5,
) -> tuple[Images, Labels]:
    """The attacker's training data under ``attack`` (model attacks leave it unchanged)."""
    if attack.name == "label-flip":
        source, target = (int(p) for p in attack.params)
        return x, np.where(y == source, target, y).astype(np.int64)
    if attack.name == "label-flip-all":
        return x, (num_classes - 1 - y).astype(np.int64)
    if attack.name == "backdoor":
        target = int(attack.params[0])
        chosen = rng.random(len(y)) < backdoor_fraction
        x, y = x.copy(), y.copy()
        x[chosen] = add_trigger(x[chosen])
        y[chosen] = target
        return x, y
    return x, y


def add_source_samples(
    attack: Attack,
    x: Images,
    y: Labels,
    pool_x: Images,
    pool_y: Labels,
    rng: np.random.Generator,
    *,
    count: int | None = None,
) -> tuple[Images, Labels]:
    """The attacker's data plus ``count`` samples of a label flip's source class.

    A label-flip attacker without samples of the class it flips poisons nothing; a real
    attacker targeting class A gathers examples of A (public data, scraping). The samples
    are drawn without replacement from ``pool_x``/``pool_y`` (in the simulator, the
    training set), still correctly labelled: :func:`poison_data` flips them afterwards.
    ``count=None`` adds as many as the attacker already has samples (so that at least half
    of what it trains on is the source class), capped by what the pool holds. Other
    attacks return the data unchanged.
    """
    if attack.name != "label-flip":
        return x, y
    source = int(attack.params[0])
    wanted = len(y) if count is None else count
    if wanted < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    candidates = np.flatnonzero(pool_y == source)
    chosen = rng.choice(candidates, size=min(wanted, len(candidates)), replace=False)
    chosen.sort()
    return (
        np.concatenate([x, pool_x[chosen]]).astype(x.dtype, copy=False),
        np.concatenate([y, pool_y[chosen]]).astype(np.int64, copy=False),
    )
