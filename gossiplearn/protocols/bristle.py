"""Bristle core: transfer learning that merges only classifier heads, by how well they do.

How it works (ALGORITHMS.md §4): every layer but the output layer is a frozen pretrained
extractor, the same on every peer, so the model a peer trains and merges is the output
layer alone (its weight and bias: ``params`` holds nothing else). As in the paper's
reference code, a peer sends only the weight matrix and keeps its bias local
(``share_bias=False``, the default; :func:`sent_tensors`): the heads it integrates are the
senders' weights under its own bias, so merging never changes its bias (``share_bias``
sends and merges the bias as one more row). A received head must hold exactly the tensors
this peer sends, in its shapes and dtypes, or it is rejected (``BadHead``). Each round the
peer trains ``local_steps`` steps from its head, keeps the trained columns of its
*familiar* classes (those in its validation set, drawn from its local data) and restores
the others, pushes the head to every neighbour, then waits for one model per neighbour (at
most ``merge_timeout`` seconds) and integrates the recent heads it holds:
:func:`~gossiplearn.aggregation.bristle.prioritise` picks at most ``candidates`` by
distance, :func:`~gossiplearn.aggregation.bristle.integrate` weighs them per class by F1
on the validation set.

Invariants: local training never changes a foreign column (the core restores them, whatever
the trainer did); the peer keeps the latest head of at most ``max_models`` neighbours,
most recent first, and a neighbour that goes down loses its head; models from peers that
are not neighbours are ignored. After ``rounds`` rounds the core emits :class:`Finished`
and ignores all input. The rounds themselves (timer, replay check, reporting) are the loop
of :mod:`~gossiplearn.protocols.rounds`; :class:`BristlePolicy` is Bristle's part.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gossiplearn.aggregation.bristle import (
    BristleMerge,
    head_matrix,
    head_params,
    integrate,
    prioritise,
)
from gossiplearn.protocols.events import Send
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.rounds import LoopState, RoundLoop
from gossiplearn.types import Params, PeerId


@dataclass(frozen=True)
class BristleConfig:
    rounds: int
    local_steps: int
    merge_timeout: float = 30.0
    samples: int = 0
    #: Explore/exploit balance of the prioritiser, and how many heads it passes on.
    alpha: float = 0.4
    candidates: int = 10
    #: Classes each peer is judged on (its best ones among ours); 0: all familiar classes.
    overlap: int = 3
    #: Recent heads kept (one per neighbour, the latest).
    max_models: int = 20
    #: Subtract each column's mean after integrating (ALGORITHMS.md §4 step 4).
    center: bool = True
    #: Send and merge the output bias too; False (the reference): it stays local.
    share_bias: bool = False
    weight: str = "head.weight"
    bias: str | None = "head.bias"

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("candidates", "max_models"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")


@dataclass(frozen=True, eq=False)
class ValidationSet:
    """A peer's local validation samples, as extractor features [n, features] and labels."""

    features: npt.NDArray[np.float32] = field(repr=False)
    labels: npt.NDArray[np.int64]

    @property
    def familiar(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))


def pick_validation(
    labels: npt.NDArray[np.integer], per_class: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Sorted indices of up to ``per_class`` random samples of each class in ``labels``."""
    picked = [
        rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        for rows in (np.flatnonzero(labels == c) for c in np.unique(labels))
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)


def validation_from(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    per_class: int,
    rng: np.random.Generator,
) -> ValidationSet:
    """A peer's validation set: up to ``per_class`` of its own samples of each class."""
    rows = pick_validation(labels, per_class, rng)
    return ValidationSet(features[rows], labels[rows])


Loop = RoundLoop[ModelMessage]


def sent_tensors(params: Params, config: BristleConfig) -> Params:
    """The tensors of ``params`` a Bristle peer sends: the head's weight, and its bias only
    with ``share_bias`` (every other tensor stays local too)."""
    names = [config.weight]
    if config.share_bias and config.bias is not None:
        names.append(config.bias)
    return {name: params[name] for name in names}


def fits(received: Params, expected: Params) -> bool:
    """Whether ``received`` holds exactly the tensors of ``expected``, same shapes and
    dtypes, all finite."""
    if received.keys() != expected.keys():
        return False
    for name, want in expected.items():
        got = np.asarray(received[name])
        if got.shape != np.shape(want) or got.dtype != np.asarray(want).dtype:
            return False
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            return False
    return True


class BristlePolicy:
    """Bristle's part of the round loop: keep the latest head of recent neighbours, wait
    for one per neighbour, integrate them by F1 on the validation set."""

    waits = True
    accepts_any_message = False

    def __init__(
        self, config: BristleConfig, validation: ValidationSet, rng: np.random.Generator
    ) -> None:
        self.config = config
        self.validation = validation
        self.familiar = validation.familiar
        self.rng = rng
        #: Latest head of each neighbour, least recent first.
        self.recent: OrderedDict[PeerId, Params] = OrderedDict()
        #: Neighbours that sent a head since the last merge.
        self.pending: set[PeerId] = set()
        #: The last integration (weights, shares, F1s), for inspection and metrics.
        self.last_merge: BristleMerge | None = None
        #: Each sender's share of this round's merged head (the own head has the rest);
        #: empty when the round merged nothing.
        self.merge_shares: dict[PeerId, float] = {}

    def model_round(self, message: ModelMessage) -> int:
        return message.round

    def sent(self, params: Params) -> Params:
        """What of ``params`` this peer sends (see :func:`sent_tensors`)."""
        return sent_tensors(params, self.config)

    def take(self, loop: Loop, sender: PeerId, message: ModelMessage) -> bool:
        if not fits(message.params, self.sent(loop.params)):
            loop.rejected["BadHead"] += 1
            return False
        self.recent[sender] = message.params
        self.recent.move_to_end(sender)
        while len(self.recent) > self.config.max_models:
            self.recent.popitem(last=False)
        self.pending.add(sender)
        return True

    def ready(self, loop: Loop) -> bool:
        return all(peer in self.pending for peer in loop.neighbours)

    def trained(self, loop: Loop, params: Params) -> Params:
        return self.keep_familiar(loop.params, params)

    def keep_familiar(self, before: Params, trained: Params) -> Params:
        """``trained`` with every foreign class's column put back as it was ``before``."""
        w, b = self.config.weight, self.config.bias
        start, end = head_matrix(before, w, b), head_matrix(trained, w, b)
        kept = start.copy()
        kept[:, self.familiar] = end[:, self.familiar]
        return head_params(kept, trained, w, b)

    def pushes(self, loop: Loop) -> list[Send[ModelMessage]]:
        message = ModelMessage(loop.round, self.sent(loop.params), self.config.samples)
        return [Send(peer, message) for peer in loop.neighbours]

    def merge(self, loop: Loop, waited: bool) -> tuple[Params, int]:
        merged, params = len(self.pending), loop.params
        self.merge_shares = {}
        if self.pending and self.recent:
            params = self.integrate(params)
        self.pending = set()
        return params, merged

    def integrate(self, params: Params) -> Params:
        """Prioritise the recent heads, integrate the chosen ones into the own head."""
        c = self.config
        own = head_matrix(params, c.weight, c.bias)
        heads = {p: self.as_head(head, params) for p, head in self.recent.items()}
        chosen = prioritise(own, heads, self.rng, alpha=c.alpha, candidates=c.candidates)
        result = integrate(
            own,
            {p: heads[p] for p in chosen},
            self.validation.features,
            self.validation.labels,
            bias=c.bias is not None,
            overlap=c.overlap,
            center=c.center,
        )
        result.shares = {p: result.shares.get(p, 0.0) for p in heads}
        self.last_merge = result
        self.merge_shares = result.shares
        merged = head_params(result.matrix, params, c.weight, c.bias)
        if not c.share_bias and c.bias is not None:
            merged[c.bias] = params[c.bias]  # exactly the own bias, not a rounded mean of it
        return merged

    def as_head(self, received: Params, own: Params) -> npt.NDArray[np.float64]:
        """A received head as a matrix; with the bias local, under this peer's own bias."""
        c = self.config
        if c.share_bias or c.bias is None:
            return head_matrix(received, c.weight, c.bias)
        return head_matrix({c.weight: received[c.weight], c.bias: own[c.bias]}, c.weight, c.bias)

    def peer_up(self, loop: Loop, peer: PeerId) -> bool:
        return True

    def peer_down(self, loop: Loop, peer: PeerId) -> None:
        self.recent.pop(peer, None)
        self.pending.discard(peer)


class BristleCore(LoopState[ModelMessage]):
    """Sans-I/O Bristle for one peer."""

    def __init__(
        self,
        config: BristleConfig,
        neighbours: Sequence[PeerId],
        params: Params,
        validation: ValidationSet,
        rng: np.random.Generator,
        *,
        round: int = 0,
    ) -> None:
        self.config = config
        self.validation = validation
        self.rng = rng
        self.policy = BristlePolicy(config, validation, rng)
        self.loop = RoundLoop(config, neighbours, params, self.policy, round=round)

    def keep_familiar(self, before: Params, trained: Params) -> Params:
        """``trained`` with every foreign class's column put back as it was ``before``."""
        return self.policy.keep_familiar(before, trained)

    def model_message(self) -> ModelMessage:
        """The own head as pushes send it (without the bias unless ``share_bias``)."""
        return ModelMessage(self.loop.round, self.policy.sent(self.loop.params), self.samples)

    @property
    def familiar(self) -> list[int]:
        return self.policy.familiar

    @property
    def neighbours(self) -> list[PeerId]:
        return self.loop.neighbours

    @property
    def recent(self) -> OrderedDict[PeerId, Params]:
        return self.policy.recent

    @property
    def pending(self) -> set[PeerId]:
        return self.policy.pending

    @property
    def last_merge(self) -> BristleMerge | None:
        return self.policy.last_merge

    @property
    def merge_shares(self) -> dict[PeerId, float]:
        return self.policy.merge_shares
