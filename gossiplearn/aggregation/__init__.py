"""Aggregation rules: pure functions that merge a peer's own model with received ones.

Every rule has the signature ``rule(own, received, **options) -> merged`` over
:data:`gossiplearn.types.Params`. Adding a rule is one module, one test file and one line
in :data:`AGGREGATORS`.

Each rule also says how much of its result came from each input: ``shares(own, received,
**options)`` (same options) returns one non-negative number per input, own first, summing
to 1 — the mixing weights for averaging rules, the share of coordinates taken from each
input for median and trimmed mean, the selection for Krum. Registered in :data:`SHARES`;
the simulator uses them to measure how much weight honest peers give to attackers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation.chain import chained, is_chain, parse_chain, rule_options
from gossiplearn.aggregation.foolsgold import foolsgold, foolsgold_shares, foolsgold_weights
from gossiplearn.aggregation.krum import krum, krum_shares, multi_krum, multi_krum_shares
from gossiplearn.aggregation.mean import mean, mean_shares
from gossiplearn.aggregation.median import median, median_shares
from gossiplearn.aggregation.trimmed_mean import trimmed_mean, trimmed_mean_shares
from gossiplearn.aggregation.vc import variance_corrected
from gossiplearn.errors import ConfigError
from gossiplearn.types import Params

Aggregator = Callable[..., Params]
Shares = npt.NDArray[np.float64]

AGGREGATORS: dict[str, Aggregator] = {
    "mean": mean,
    "vc": variance_corrected,
    "median": median,
    "trimmed-mean": trimmed_mean,
    "krum": krum,
    "multi-krum": multi_krum,
    "foolsgold": foolsgold,
}

#: Rule name -> its shares function (see the module docstring); same keys as AGGREGATORS.
SHARES: dict[str, Callable[..., Shares]] = {
    "mean": mean_shares,
    "vc": mean_shares,
    "median": median_shares,
    "trimmed-mean": trimmed_mean_shares,
    "krum": krum_shares,
    "multi-krum": multi_krum_shares,
    "foolsgold": foolsgold_shares,
}

__all__ = [
    "AGGREGATORS",
    "SHARES",
    "Aggregator",
    "Shares",
    "foolsgold",
    "foolsgold_weights",
    "get_aggregator",
    "get_shares",
    "has_shares",
    "krum",
    "mean",
    "median",
    "multi_krum",
    "trimmed_mean",
    "variance_corrected",
]


def get_aggregator(name: str, **options: Any) -> Callable[[Params, Sequence[Params]], Params]:
    """Look up a rule by name (or a chain, see :mod:`gossiplearn.aggregation.chain`) and
    bind its options; unknown names raise ConfigError."""
    if is_chain(name):
        return chained(name, **options)
    try:
        rule = AGGREGATORS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATORS))
        raise ConfigError(f"unknown aggregator {name!r}: choose one of {known}") from None

    def bound(own: Params, received: Sequence[Params]) -> Params:
        return rule(own, received, **options)

    return bound


def has_shares(name: str) -> bool:
    """Whether rule ``name`` says how much each input weighs (a chain: its rule does;
    variance correction rescales without moving weight)."""
    if is_chain(name):
        chain = parse_chain(name)
        return not chain.sybilwall and chain.rule in SHARES
    return name in SHARES


def get_shares(name: str, **options: Any) -> Callable[[Params, Sequence[Params]], Shares]:
    """The shares function of rule ``name`` with its options bound (as get_aggregator)."""
    get_aggregator(name)  # the same error for an unknown name
    if is_chain(name):
        chain = parse_chain(name)
        assert chain.rule is not None
        name, options = chain.rule, rule_options(chain, options)
    shares = SHARES[name]

    def bound(own: Params, received: Sequence[Params]) -> Shares:
        return shares(own, received, **options)

    return bound
