"""The round loop of the gossip-family cores: train, push, wait for models, merge, report.

Gossip, D-PSGD, SybilWall and Bristle differ in what they accept, when a round is ready,
how they merge and what they send; the rest is this one loop. A core is a
:class:`RoundLoop` built with the protocol's :class:`RoundPolicy`::

    core = RoundLoop(settings, neighbours, params, policy, round=round_)

How it works (``R`` = ``settings.rounds``; "end the round" is the last row)::

    phase      event                       what the loop does                  next phase
    ---------  --------------------------  ----------------------------------  ----------
    FINISHED   anything                    nothing                             FINISHED
    any        Start (sent once, in IDLE)  StartTraining(params)               TRAINING
    any        TrainingDone(p)             params = policy.trained(p);         WAITING, or
                                           round += 1; policy.pushes;          end the round
                                           ready (or not policy.waits): end
                                           the round; else SetTimer(token+1)
    any        MessageReceived from a      rejected["NotNeighbour"]            same
               non-neighbour
    any        a model whose round is not  rejected["Replay"]                  same
               newer than the last taken
               from that sender
    any        MessageReceived, else       policy.take; WAITING and ready:     same, or
                                           end the round                       end the round
    WAITING    Timer(current token)        end the round (merge what came)     see below
    any        PeerDown(neighbour)         policy.peer_down; WAITING and       same, or
                                           ready: end the round                end the round
    any        PeerUp(new peer)            a neighbour, if policy.peer_up      same
    (end the round)                        policy.merge; RoundDone(round);     FINISHED if
                                           Finished if round >= R, else        round >= R,
                                           StartTraining(params)               else TRAINING

Invariants: one timer is live at a time (older tokens are ignored); while WAITING the
round is not ready (every change that could make it ready is checked at once); the loop
remembers the last round taken from each of at most ``MAX_TRACKED_SENDERS`` senders
(least recent forgotten), and a message that a policy does not take does not move that
mark; a round is reported once, after its merge; after ``R`` rounds nothing more happens.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from gossiplearn.protocols.events import (
    Finished,
    Leave,
    Log,
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
from gossiplearn.protocols.messages import Message, ModelMessage
from gossiplearn.types import Params, PeerId

#: The messages a loop's protocol speaks (ModelMessage, or Message for more types).
Msg = TypeVar("Msg", bound=Message)

#: Events a loop handles and effects it returns, for a protocol speaking ``Msg``.
LoopEvent = Start | Timer | MessageReceived[Msg] | TrainingDone | PeerUp | PeerDown | Leave
LoopEffect = Send[Msg] | StartTraining | SetTimer | RoundDone | Log | Finished

#: Senders whose last round is remembered for the replay check (least recent forgotten).
MAX_TRACKED_SENDERS = 4096


class Phase(enum.Enum):
    IDLE = "idle"
    TRAINING = "training"
    WAITING = "waiting"
    FINISHED = "finished"


class RoundSettings(Protocol):
    """What the loop reads of a protocol's config (every gossip-family config has it)."""

    @property
    def rounds(self) -> int: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def merge_timeout(self) -> float: ...
    @property
    def samples(self) -> int: ...


class RoundPolicy(Protocol[Msg]):
    """What a protocol decides; the loop does the rest. Methods get the loop to read its
    ``round``, ``params``, ``neighbours`` and ``waiting``, and to count in ``rejected``."""

    @property
    def waits(self) -> bool:
        """True: after training, wait for the round to be ready (at most
        ``merge_timeout``); False: end the round at once, merging only if ready."""
        ...

    @property
    def accepts_any_message(self) -> bool:
        """True if the protocol speaks message types beyond ModelMessage."""
        ...

    def model_round(self, message: Msg) -> int | None:
        """The round of the sender's own model in ``message``, checked against replays;
        None for a message that carries no model of the sender (e.g. a relayed one)."""
        ...

    def take(self, loop: RoundLoop[Msg], sender: PeerId, message: Msg) -> bool:
        """Store what a neighbour sent; False if it is ignored (or rejected: count why in
        ``loop.rejected``)."""
        ...

    def ready(self, loop: RoundLoop[Msg]) -> bool:
        """True when the models the round waits for are all there."""
        ...

    def trained(self, loop: RoundLoop[Msg], params: Params) -> Params:
        """The model to keep after local training gave ``params`` (``loop.params`` still
        holds the model training started from)."""
        ...

    def pushes(self, loop: RoundLoop[Msg]) -> list[Send[Msg]]:
        """What to send once the model of round ``loop.round`` is trained."""
        ...

    def merge(self, loop: RoundLoop[Msg], waited: bool) -> tuple[Params, int]:
        """End of the round: the merged model and how many received models went into it.
        ``waited``: the round waited (it is ready, or the timer ran out) rather than ending
        right after training without waiting."""
        ...

    def peer_up(self, loop: RoundLoop[Msg], peer: PeerId) -> bool:
        """True to take a newly reachable peer as a neighbour."""
        ...

    def peer_down(self, loop: RoundLoop[Msg], peer: PeerId) -> None:
        """Forget what neighbour ``peer`` (already removed from ``loop.neighbours``) sent."""
        ...


def push_model(
    loop: RoundLoop[Msg], targets: Sequence[PeerId], samples: int
) -> list[Send[ModelMessage]]:
    """The trained model of this round, to each of ``targets`` (one message object, so a
    wrapper may poison it once for all)."""
    message = ModelMessage(loop.round, loop.params, samples)
    return [Send(peer, message) for peer in targets]


class RoundLoop(Generic[Msg]):
    """Sans-I/O rounds of one gossip-family peer; ``policy`` is the protocol's part."""

    reports_rounds = True

    def __init__(
        self,
        settings: RoundSettings,
        neighbours: Sequence[PeerId],
        params: Params,
        policy: RoundPolicy[Msg],
        *,
        round: int = 0,
    ) -> None:
        self.settings = settings
        self.neighbours = list(neighbours)
        self.params = params
        self.policy = policy
        self.round = round  # > 0 when resuming or joining a running network
        self.phase = Phase.IDLE
        #: Messages ignored, by reason (read by drivers for their metrics).
        self.rejected: Counter[str] = Counter()
        #: sender -> round of the last model taken from it (the replay check).
        self.last_round_from: OrderedDict[PeerId, int] = OrderedDict()
        self._timer_token = 0

    @property
    def accepts_any_message(self) -> bool:
        return self.policy.accepts_any_message

    @property
    def training(self) -> bool:
        return self.phase is Phase.TRAINING

    @property
    def waiting(self) -> bool:
        return self.phase is Phase.WAITING

    @property
    def finished(self) -> bool:
        return self.phase is Phase.FINISHED

    def handle(self, now: float, event: LoopEvent[Msg]) -> list[LoopEffect[Msg]]:
        if self.phase is Phase.FINISHED:
            return []
        match event:
            case Start():
                return self._train()
            case TrainingDone(params=params):
                return self._after_training(params)
            case MessageReceived(sender=sender, message=message):
                return self._on_message(sender, message)
            case Timer(token=token) if self.waiting and token == self._timer_token:
                return self._end_round(waited=True)
            case PeerUp(peer=peer) if peer not in self.neighbours:
                if self.policy.peer_up(self, peer):
                    self.neighbours.append(peer)
            case PeerDown(peer=peer) if peer in self.neighbours:
                self.neighbours.remove(peer)
                self.policy.peer_down(self, peer)
                return self._end_if_ready()
        return []

    def _on_message(self, sender: PeerId, message: Msg) -> list[LoopEffect[Msg]]:
        if sender not in self.neighbours:
            self.rejected["NotNeighbour"] += 1
            return []
        round_ = self.policy.model_round(message)
        if round_ is not None:
            last = self.last_round_from.get(sender)
            if last is not None and round_ <= last:
                self.rejected["Replay"] += 1
                return []
        if self.policy.take(self, sender, message) and round_ is not None:
            self.last_round_from[sender] = round_
            self.last_round_from.move_to_end(sender)
            if len(self.last_round_from) > MAX_TRACKED_SENDERS:
                self.last_round_from.popitem(last=False)
        return self._end_if_ready()

    def _end_if_ready(self) -> list[LoopEffect[Msg]]:
        if self.waiting and self.policy.ready(self):
            return self._end_round(waited=True)
        return []

    def _train(self) -> list[LoopEffect[Msg]]:
        self.phase = Phase.TRAINING
        return [StartTraining(self.params, self.settings.local_steps)]

    def _after_training(self, params: Params) -> list[LoopEffect[Msg]]:
        self.params = self.policy.trained(self, params)
        self.round += 1
        effects: list[LoopEffect[Msg]] = [*self.policy.pushes(self)]
        if self.policy.ready(self) or not self.policy.waits:
            return effects + self._end_round(waited=False)
        self.phase = Phase.WAITING
        self._timer_token += 1
        effects.append(SetTimer(self.settings.merge_timeout, "merge", self._timer_token))
        return effects

    def _end_round(self, *, waited: bool) -> list[LoopEffect[Msg]]:
        self.params, merged = self.policy.merge(self, waited)
        effects: list[LoopEffect[Msg]] = [RoundDone(self.round, self.params, merged)]
        if self.round >= self.settings.rounds:
            self.phase = Phase.FINISHED
            return [*effects, Finished()]
        return effects + self._train()


class LoopState(Generic[Msg]):
    """What a core that holds a :class:`RoundLoop` in ``self.loop`` shows its drivers:
    ``handle`` and the loop's state, forwarded (the core owns the loop; this only reads)."""

    reports_rounds = True
    loop: RoundLoop[Msg]

    def handle(self, now: float, event: LoopEvent[Msg]) -> list[LoopEffect[Msg]]:
        return self.loop.handle(now, event)

    @property
    def params(self) -> Params:
        return self.loop.params

    @property
    def round(self) -> int:
        return self.loop.round

    @property
    def samples(self) -> int:
        """Training samples of this peer (the weight its models carry)."""
        return self.loop.settings.samples

    def model_message(self) -> Message:
        """The own current model as this protocol sends it, for drivers that answer or
        greet a peer outside the rounds (a protocol that signs its pushes overrides it)."""
        return ModelMessage(self.loop.round, self.loop.params, self.samples)

    @property
    def training(self) -> bool:
        return self.loop.training

    @property
    def waiting(self) -> bool:
        return self.loop.waiting

    @property
    def finished(self) -> bool:
        return self.loop.finished

    @property
    def rejected(self) -> Counter[str]:
        """Messages ignored, by reason (read by drivers for their metrics)."""
        return self.loop.rejected

    @property
    def last_round_from(self) -> OrderedDict[PeerId, int]:
        return self.loop.last_round_from
