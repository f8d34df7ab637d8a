"""Protocol registry: a protocol's name -> the builder of one peer's core.

Every driver (the simulator, the asyncio Peer, and through it ``peer``, ``launch`` and
scenario files) builds cores here, from a :class:`CoreSpec` of plain values, and never
tests for a concrete core class. Adding a gossip-family protocol is a policy file, a
test file and one line in :data:`BUILDERS`.

FedAvg is not here: it is a server and clients, simulated as a reference only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gossiplearn.aggregation import get_aggregator
from gossiplearn.protocols.bristle import BristleCore, validation_from
from gossiplearn.protocols.dpsgd import DPSGDConfig, DPSGDCore
from gossiplearn.protocols.events import AnyCore, Core
from gossiplearn.protocols.gossip import GossipCore, Merge, Weigh
from gossiplearn.protocols.modest import IdCheck, ModestCore, View
from gossiplearn.protocols.signing import Signer, Verifier
from gossiplearn.protocols.sybilwall import SybilWallCore
from gossiplearn.types import Params, PeerId

if TYPE_CHECKING:
    from gossiplearn.config import LearningConfig


@dataclass(frozen=True)
class CoreSpec:
    """What a builder may use to make one peer's core.

    ``settings`` holds the protocol's options (merge rule, timeouts, aggregator_params);
    ``rounds``, ``steps`` and ``samples`` are this peer's. The optional fields serve the
    protocols that need them and are ignored by the others."""

    peer: PeerId
    settings: LearningConfig
    rounds: int
    steps: int
    samples: int
    params: Params
    rng: np.random.Generator
    neighbours: Sequence[PeerId] = ()
    #: Rounds already done (a peer resuming from a checkpoint, or joining a running network).
    round: int = 0
    #: Signs and checks what travels signed (SybilWall histories, MoDeST membership).
    signer: Signer | None = None
    verifier: Verifier | None = None
    #: Gossip: the merge rule (default: ``settings.aggregator``) and the merge-share meter.
    merge: Merge | None = None
    weigh: Weigh | None = None
    #: D-PSGD: each neighbour's mixing weight (the neighbours themselves); None on a real
    #: peer, whose neighbours come and go: max-degree weights over ``neighbour_cap``.
    weights: Mapping[PeerId, float] | None = None
    #: D-PSGD on the one-peer exponential graph: the number of peers (ids 0..n-1) whose
    #: schedule this peer follows; None: every neighbour each round.
    one_peer_exp: int | None = None
    #: A real peer's most neighbours (D-PSGD's max-degree weights: 1 / (1 + cap) each).
    neighbour_cap: int | None = None
    #: Bristle: the peer's own (featurised) training data, to draw its validation set from.
    data: tuple[np.ndarray, np.ndarray] | None = None
    #: MoDeST: the initial view, whether the peer joins a running network, and which
    #: peer ids are well formed.
    view: View | None = None
    joining: bool = False
    valid_id: IdCheck | None = None


Builder = Callable[[CoreSpec], Core | AnyCore]


def _gossip(spec: CoreSpec) -> GossipCore:
    config = spec.settings.gossip_config(spec.rounds, spec.steps, spec.samples)
    merge = spec.merge
    if merge is None:
        merge = get_aggregator(spec.settings.aggregator, **spec.settings.aggregator_options())
    return GossipCore(
        config, spec.neighbours, spec.params, merge, spec.rng, round=spec.round, weigh=spec.weigh
    )


def _dpsgd(spec: CoreSpec) -> DPSGDCore:
    config = DPSGDConfig(spec.rounds, spec.steps, spec.settings.merge_timeout, spec.samples)
    if spec.weights is not None:  # the simulator: fixed neighbours, Metropolis–Hastings
        one_peer = (int(spec.peer), spec.one_peer_exp) if spec.one_peer_exp else None
        return DPSGDCore(config, spec.weights, spec.params, one_peer=one_peer)
    if spec.one_peer_exp is not None:
        raise ValueError("dpsgd: the one-peer exponential graph needs fixed peer ids 0..n-1")
    if spec.neighbour_cap is None:
        raise ValueError("dpsgd: a peer needs its neighbours' weights or a neighbour cap")
    return DPSGDCore.dynamic(config, spec.neighbour_cap, spec.params, round=spec.round)


def _sybilwall(spec: CoreSpec) -> SybilWallCore:
    config = spec.settings.sybilwall_config(spec.rounds, spec.steps, spec.samples)
    return SybilWallCore(
        spec.peer, config, spec.neighbours, spec.params, spec.rng, round=spec.round,
        signer=spec.signer, verifier=spec.verifier,
    )  # fmt: skip


def _bristle(spec: CoreSpec) -> BristleCore:
    """A Bristle peer; its validation set is drawn from its own (featurised) data."""
    if spec.data is None:
        raise ValueError("bristle: a peer needs its own training data for validation")
    config = spec.settings.bristle_config(spec.rounds, spec.steps, spec.samples)
    features, labels = spec.data
    per_class = spec.settings.validation_per_class()
    validation = validation_from(features, labels, per_class, spec.rng)
    return BristleCore(config, spec.neighbours, spec.params, validation, spec.rng, round=spec.round)


def _modest(spec: CoreSpec) -> ModestCore:
    config = spec.settings.modest_config(spec.rounds, spec.steps, spec.samples)
    view = spec.view if spec.view is not None else {}
    return ModestCore(
        spec.peer, config, spec.params, view, spec.rng, joining=spec.joining,
        signer=spec.signer, verifier=spec.verifier, valid_id=spec.valid_id,
    )  # fmt: skip


#: Every protocol a peer can run, simulated or real.
BUILDERS: dict[str, Builder] = {
    "gossip": _gossip,
    "dpsgd": _dpsgd,
    "sybilwall": _sybilwall,
    "bristle": _bristle,
    "modest": _modest,
}

#: Protocols that run only in the simulator, and why.
SIMULATED_ONLY = {"fedavg": "FedAvg is a central-server reference; it runs in simulate only"}


def build_core(name: str, spec: CoreSpec) -> Core | AnyCore:
    """The core of protocol ``name`` for one peer; ValueError for an unknown name."""
    builder = BUILDERS.get(name)
    if builder is None:
        known = ", ".join(sorted(BUILDERS))
        raise ValueError(f"unknown protocol {name!r}: choose one of {known}")
    return builder(spec)
