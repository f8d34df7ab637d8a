"""Gossip learning core: train, push, merge.

How it works: each round the peer trains ``local_steps`` steps, pushes its trained model
to all its neighbours (or one random neighbour), then merges once its buffer holds
``buffer_size`` received models, using the configured aggregation rule. With
``wait_for_buffer`` the peer waits for the buffer to fill, at most ``merge_timeout``
seconds, before it starts the next round; without it, it trains on and merges at the first
round boundary where the buffer is full.

Invariants: the buffer holds at most one model per sender, its newest, and only from
current neighbours (others are counted in ``rejected["NotNeighbour"]``), so a flood from
one sender weighs as one model; it never holds more than ``max_buffer`` models (oldest
sender dropped first); a round's model is reported once, after the merge; after
``rounds`` rounds the core emits :class:`Finished` and ignores all input.
Replays: a model whose round is not newer than the last one taken from the same sender
(a duplicate, or an old round sent again) is ignored and counted in ``rejected["Replay"]``.
The rounds themselves (timer, replay check, reporting) are :mod:`~gossiplearn.protocols.rounds`'s
loop; :class:`GossipPolicy` is the part that is gossip's own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gossiplearn.protocols.events import Send
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.rounds import LoopState, RoundLoop, push_model
from gossiplearn.types import Params, PeerId

Merge = Callable[[Params, Sequence[Params]], Params]
#: How much of a merge's result came from each input, own first (aggregation.SHARES).
Weigh = Callable[[Params, Sequence[Params]], npt.NDArray[np.float64]]
Loop = RoundLoop[ModelMessage]


@dataclass(frozen=True)
class GossipConfig:
    rounds: int
    local_steps: int
    push: Literal["all", "one"] = "all"
    #: Models (of distinct neighbours) to collect before merging, at most one per neighbour;
    #: None means one per neighbour ("all") or 1 ("one"), and 0 while the peer has none.
    buffer_size: int | None = None
    wait_for_buffer: bool = True
    merge_timeout: float = 30.0
    samples: int = 0


class GossipPolicy:
    """Gossip's part of the round loop: a buffer of the newest model of each sender,
    merged by an aggregation rule once it holds ``buffer_size`` of them."""

    accepts_any_message = False

    def __init__(
        self,
        config: GossipConfig,
        neighbours: int,
        merge: Merge,
        rng: np.random.Generator,
        weigh: Weigh | None = None,
    ) -> None:
        self.config = config
        self.rule = merge
        self.weigh = weigh
        self.rng = rng
        self.waits = config.wait_for_buffer
        # Fixed at start: bounds memory whatever neighbours come and go.
        self.max_buffer = 4 * max(config.buffer_size or 0, neighbours, 1)
        #: sender -> its newest model since the last merge, least recently updated first.
        self.buffer: OrderedDict[PeerId, Params] = OrderedDict()
        #: With ``weigh``: the share of the last merge's result that came from each sender
        #: (own share left out; empty when the round merged nothing). For attack metrics.
        self.merge_shares: dict[PeerId, float] = {}

    def buffer_size(self, neighbours: Sequence[PeerId]) -> int:
        """Senders to wait for: at most one model counts per neighbour."""
        if self.config.buffer_size is not None:
            return min(self.config.buffer_size, len(neighbours))
        if not neighbours:
            return 0  # alone: nobody to wait for
        return 1 if self.config.push == "one" else len(neighbours)

    def model_round(self, message: ModelMessage) -> int:
        return message.round

    def take(self, loop: Loop, sender: PeerId, message: ModelMessage) -> bool:
        self.buffer[sender] = message.params
        self.buffer.move_to_end(sender)
        if len(self.buffer) > self.max_buffer:
            self.buffer.popitem(last=False)
        return True

    def ready(self, loop: Loop) -> bool:
        return len(self.buffer) >= self.buffer_size(loop.neighbours)

    def trained(self, loop: Loop, params: Params) -> Params:
        return params

    def pushes(self, loop: Loop) -> list[Send[ModelMessage]]:
        neighbours = loop.neighbours
        if self.config.push == "one" and neighbours:
            neighbours = [neighbours[int(self.rng.integers(len(neighbours)))]]
        return push_model(loop, neighbours, self.config.samples)

    def merge(self, loop: Loop, waited: bool) -> tuple[Params, int]:
        """Merge if the buffer is full (or, having waited, whatever arrived)."""
        self.merge_shares = {}
        if not self.buffer or not (waited or self.ready(loop)):
            return loop.params, 0
        received = list(self.buffer.values())
        if self.weigh is not None:
            shares = self.weigh(loop.params, received)[1:]
            for sender, share in zip(self.buffer, shares, strict=True):
                self.merge_shares[sender] = float(share)
        merged = self.rule(loop.params, received), len(received)
        self.buffer.clear()
        return merged

    def peer_up(self, loop: Loop, peer: PeerId) -> bool:
        return True

    def peer_down(self, loop: Loop, peer: PeerId) -> None:
        pass  # a model it sent before going down still counts


class GossipCore(LoopState[ModelMessage]):
    """Sans-I/O gossip learning for one peer."""

    def __init__(
        self,
        config: GossipConfig,
        neighbours: Sequence[PeerId],
        params: Params,
        merge: Merge,
        rng: np.random.Generator,
        *,
        round: int = 0,
        weigh: Weigh | None = None,
    ) -> None:
        self.config = config
        self.rng = rng
        self.policy = GossipPolicy(config, len(neighbours), merge, rng, weigh)
        self.loop = RoundLoop(config, neighbours, params, self.policy, round=round)

    @property
    def neighbours(self) -> list[PeerId]:
        return self.loop.neighbours

    @property
    def merge(self) -> Merge:
        """The aggregation rule."""
        return self.policy.rule

    @property
    def weigh(self) -> Weigh | None:
        return self.policy.weigh

    @property
    def buffer(self) -> OrderedDict[PeerId, Params]:
        return self.policy.buffer

    @property
    def max_buffer(self) -> int:
        return self.policy.max_buffer

    @property
    def buffer_size(self) -> int:
        """Senders to wait for: at most one model counts per neighbour."""
        return self.policy.buffer_size(self.loop.neighbours)

    @property
    def merge_shares(self) -> dict[PeerId, float]:
        return self.policy.merge_shares
