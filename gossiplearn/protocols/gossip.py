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
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from gossiplearn.protocols.events import (
    Effect,
    Event,
    Finished,
    MessageReceived,
    PeerDown,
    PeerUp,
    RoundDone,
    Send,
    SetTimer,
    Start,
    StartTraining,
    Timer,
    TrainingDone,
)
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.types import Params, PeerId

Merge = Callable[[Params, Sequence[Params]], Params]
#: How much of a merge's result came from each input, own first (aggregation.SHARES).
Weigh = Callable[[Params, Sequence[Params]], npt.NDArray[np.float64]]

#: Senders whose last round is remembered for the replay check (least recent forgotten).
MAX_TRACKED_SENDERS = 4096


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


class GossipCore:
    """Sans-I/O gossip learning for one peer."""

    reports_rounds = True

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
        self.neighbours = list(neighbours)
        self.params = params
        self.merge = merge
        self.weigh = weigh
        self.rng = rng
        self.round = round  # > 0 when resuming from a checkpoint
        self.training = False
        self.waiting = False
        self.finished = False
        self._timer_token = 0
        # Fixed at start: bounds memory whatever neighbours come and go.
        self.max_buffer = 4 * max(config.buffer_size or 0, len(self.neighbours), 1)
        #: sender -> its newest model since the last merge, least recently updated first.
        self.buffer: OrderedDict[PeerId, Params] = OrderedDict()
        #: With ``weigh``: the share of the last merge's result that came from each sender
        #: (own share left out; empty when the round merged nothing). For attack metrics.
        self.merge_shares: dict[PeerId, float] = {}
        #: sender -> round of the last model taken from it (the replay check).
        self.last_round_from: OrderedDict[PeerId, int] = OrderedDict()
        #: Messages ignored, by reason (read by drivers for their metrics).
        self.rejected: Counter[str] = Counter()

    @property
    def buffer_size(self) -> int:
        """Senders to wait for: at most one model counts per neighbour."""
        if self.config.buffer_size is not None:
            return min(self.config.buffer_size, len(self.neighbours))
        if not self.neighbours:
            return 0  # alone: nobody to wait for
        return 1 if self.config.push == "one" else len(self.neighbours)

    def handle(self, now: float, event: Event) -> list[Effect]:
        if self.finished:
            return []
        match event:
            case Start():
                return self._train()
            case TrainingDone(params=params):
                return self._after_training(params)
            case MessageReceived(sender=sender, message=message):
                if sender not in self.neighbours:
                    self.rejected["NotNeighbour"] += 1
                    return []
                if self._is_replay(sender, message.round):
                    self.rejected["Replay"] += 1
                    return []
                self.buffer[sender] = message.params
                self.buffer.move_to_end(sender)
                if len(self.buffer) > self.max_buffer:
                    self.buffer.popitem(last=False)
                if self.waiting and len(self.buffer) >= self.buffer_size:
                    return self._end_round()
            case Timer(token=token) if self.waiting and token == self._timer_token:
                return self._end_round()
            case PeerUp(peer=peer) if peer not in self.neighbours:
                self.neighbours.append(peer)
            case PeerDown(peer=peer) if peer in self.neighbours:
                self.neighbours.remove(peer)
                if self.waiting and len(self.buffer) >= self.buffer_size:
                    return self._end_round()
        return []

    def _is_replay(self, sender: PeerId, round_: int) -> bool:
        """True if ``sender`` already gave us a model of round ``round_`` or later; else
        remember ``round_`` as its latest."""
        last = self.last_round_from.get(sender)
        if last is not None and round_ <= last:
            return True
        self.last_round_from[sender] = round_
        self.last_round_from.move_to_end(sender)
        if len(self.last_round_from) > MAX_TRACKED_SENDERS:
            self.last_round_from.popitem(last=False)
        return False

    def _train(self) -> list[Effect]:
        self.training = True
        return [StartTraining(self.params, self.config.local_steps)]

    def _after_training(self, params: Params) -> list[Effect]:
        self.training = False
        self.params = params
        self.round += 1
        message = ModelMessage(self.round, params, self.config.samples)
        effects: list[Effect] = [Send(peer, message) for peer in self._targets()]
        if len(self.buffer) >= self.buffer_size or not self.config.wait_for_buffer:
            return effects + self._end_round()
        self.waiting = True
        self._timer_token += 1
        effects.append(SetTimer(self.config.merge_timeout, "merge", self._timer_token))
        return effects

    def _targets(self) -> list[PeerId]:
        if not self.neighbours:
            return []
        if self.config.push == "all":
            return list(self.neighbours)
        return [self.neighbours[int(self.rng.integers(len(self.neighbours)))]]

    def _end_round(self) -> list[Effect]:
        """Merge if the buffer is full (or on timeout, whatever arrived), report, go on."""
        full = len(self.buffer) >= self.buffer_size
        merged = 0
        self.merge_shares = {}
        if self.buffer and (full or self.waiting):
            merged = len(self.buffer)
            received = list(self.buffer.values())
            if self.weigh is not None:
                shares = self.weigh(self.params, received)[1:]
                for sender, share in zip(self.buffer, shares, strict=True):
                    self.merge_shares[sender] = float(share)
            self.params = self.merge(self.params, received)
            self.buffer.clear()
        self.waiting = False
        effects: list[Effect] = [RoundDone(self.round, self.params, merged)]
        if self.round >= self.config.rounds:
            self.finished = True
            return [*effects, Finished()]
        return effects + self._train()
