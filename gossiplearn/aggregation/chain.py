"""Composed merge rules, written as a chain: ``[sybilwall+]RULE[+vc]``.

* ``RULE+vc`` — variance correction after a rule: merge with RULE (median, trimmed-mean,
  krum, multi-krum, foolsgold), then restore each tensor's variance
  (:func:`~gossiplearn.aggregation.vc.restore_variance`). Averaging models from independent
  initialisations shrinks their variance, and a robust rule averages too (trimmed mean,
  multi-krum) or picks a coordinate-wise middle value (median), so each inherits the
  stall variance correction cures.
* ``sybilwall+RULE`` — SybilWall's Sybil filter, then a Byzantine-robust rule: of senders
  whose histories are near-copies of each other (Sybils: identical histories), one model
  goes on (:func:`~gossiplearn.aggregation.foolsgold.one_per_copy`), and RULE merges the
  own model with those, so that a group of Sybils counts as one sender and lone Byzantine
  peers meet the rule. Near is judged against a typical sender, not SybilWall's most
  unusual one: against the latter, distinct attackers sending noise would leave every
  honest model out.
* ``sybilwall+vc`` — SybilWall's weighted mean, then variance correction.

``sybilwall`` chains run in the SybilWall protocol (signed histories); the others in plain
gossip. Each part is a pure function; a chain binds them, nothing is subclassed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gossiplearn.aggregation.vc import restore_variance
from gossiplearn.errors import ConfigError
from gossiplearn.types import Params

#: Rules a chain can hold in the middle (``vc`` is the stage at the end; ``mean`` then vc
#: is plain ``vc``).
CHAIN_RULES = ("mean", "median", "trimmed-mean", "krum", "multi-krum", "foolsgold")
#: Rules that also weigh models by similarity, which SybilWall already does.
_NOT_AFTER_SYBILWALL = ("foolsgold",)

Merge = Callable[[Params, Sequence[Params]], Params]
#: ``restore(merged, own, received)``: the variance correction stage.
Restore = Callable[[Params, Params, Sequence[Params]], Params]


@dataclass(frozen=True)
class Chain:
    """A parsed chain: SybilWall's weights first or not, the rule, vc at the end or not."""

    sybilwall: bool
    rule: str | None
    vc: bool


def is_chain(name: str) -> bool:
    return "+" in name


def parse_chain(spec: str) -> Chain:
    """The chain ``spec`` writes; ConfigError naming what is allowed."""
    parts = spec.split("+")
    sybilwall = parts[0] == "sybilwall"
    vc = parts[-1] == "vc"
    middle = parts[int(sybilwall) : len(parts) - int(vc)]
    rule = middle[0] if len(middle) == 1 else None
    problem = None
    if "vc" in middle or "sybilwall" in middle:
        problem = "sybilwall can only come first, and vc only last"
    elif len(middle) > 1 or (rule is not None and rule not in CHAIN_RULES):
        problem = f"{'+'.join(middle)!r} is not one rule of {', '.join(CHAIN_RULES)}"
    elif rule is None and not (sybilwall and vc):
        problem = "a chain needs a rule, and vc can only come last"
    elif sybilwall and rule in _NOT_AFTER_SYBILWALL:
        problem = f"{rule} weighs models by similarity, as sybilwall already does"
    elif rule == "mean" and vc and not sybilwall:
        problem = "mean+vc is vc itself: write vc"
    elif rule == "mean" and not vc and not sybilwall:
        problem = "mean alone is no chain: write mean"
    if problem is not None:
        raise ConfigError(
            f"aggregator chain {spec!r}: {problem}. Chains are [sybilwall+]RULE[+vc] with RULE "
            f"one of {', '.join(CHAIN_RULES)} (e.g. median+vc, sybilwall+trimmed-mean+vc), "
            "or sybilwall+vc"
        )
    return Chain(sybilwall, rule, vc)


def rule_options(chain: Chain, options: dict[str, Any]) -> dict[str, Any]:
    """The options of ``chain``'s rule among a run's: β and clip for mean, what the
    rule's own parameters are (e.g. ``trim``, ``byzantine``)."""
    from gossiplearn.aggregation import AGGREGATORS

    if chain.rule is None:
        return {}
    accepted = inspect.signature(AGGREGATORS[chain.rule]).parameters
    return {k: v for k, v in options.items() if k in accepted}


def composed_rule(chain: Chain, options: dict[str, Any]) -> Merge | None:
    """``chain``'s rule with its options bound (None: SybilWall's weighted mean)."""
    from gossiplearn.aggregation import get_aggregator

    if chain.rule is None:
        return None
    return get_aggregator(chain.rule, **rule_options(chain, options))


def variance_stage(chain: Chain, options: dict[str, Any]) -> Restore | None:
    """``chain``'s variance correction, with β and the target bound (None without vc)."""
    if not chain.vc:
        return None
    beta = float(options.get("beta", 0.5))
    target = options.get("target", "others")

    def restore(merged: Params, own: Params, received: Sequence[Params]) -> Params:
        return restore_variance(merged, own, received, beta=beta, target=target)

    return restore


def chained(spec: str, **options: Any) -> Merge:
    """The merge rule of a chain without sybilwall: the rule, then vc if asked for."""
    chain = parse_chain(spec)
    if chain.sybilwall:
        raise ConfigError(f"aggregator chain {spec!r} runs in the sybilwall protocol")
    rule = composed_rule(chain, options)
    assert rule is not None
    restore = variance_stage(chain, options)
    if restore is None:
        return rule

    def merge(own: Params, received: Sequence[Params]) -> Params:
        return restore(rule(own, received), own, received)

    return merge
