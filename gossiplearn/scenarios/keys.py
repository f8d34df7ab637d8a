"""Signing keys of a simulated run, and attackers that sign what they send.

Every simulated peer (Sybil identities included) has an Ed25519 key derived from the run
seed (:class:`~gossiplearn.protocols.signing.SeedKeys`), so runs stay reproducible. In a
SybilWall run, honest peers push their models signed and relay only signed histories;
an attacker then signs its pushes too, as whichever identity sends them -- it owns the keys
of its Sybils, so it can, and its histories travel like anyone's.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from gossiplearn.attacks import Attack
from gossiplearn.attacks.core import AttackerCore, SigningAttackerCore
from gossiplearn.protocols.events import Core
from gossiplearn.protocols.signing import SeedKeys
from gossiplearn.types import PeerId


@functools.lru_cache(maxsize=8)
def run_keys(seed: int) -> SeedKeys:
    """The keys of the run with ``seed`` (one object, so its verdict cache is shared)."""
    return SeedKeys(seed)


def attacker_core(
    seed: int,
    sign: bool,
    me: PeerId,
    inner: Core,
    attack: Attack,
    rng: np.random.Generator,
    identities: Mapping[PeerId, Sequence[PeerId]] | None = None,
) -> AttackerCore:
    """The attacker ``me``: signing its pushes with the run's keys when ``sign``."""
    if sign:
        return SigningAttackerCore(me, run_keys(seed), inner, attack, rng, identities)
    return AttackerCore(inner, attack, rng, identities)
