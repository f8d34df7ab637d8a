"""An attacker as a wrapper around an honest protocol core.

The attacker runs the honest protocol (so it follows the network like any peer) but lies
in what it sends: a model attack replaces each outgoing model with a poisoned one
(:func:`~gossiplearn.attacks.model.poison_model`), relative to the model its local
training started from. A Sybil attacker controls several identities: every model it
sends goes out once from each identity to that identity's neighbours, so honest peers
receive the same model from many "different" peers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from gossiplearn.attacks.model import poison_model
from gossiplearn.attacks.spec import Attack
from gossiplearn.protocols.events import (
    AnyEvent,
    Core,
    Effect,
    Event,
    MessageReceived,
    RoundDone,
    Send,
    StartTraining,
)
from gossiplearn.protocols.messages import Message, ModelMessage
from gossiplearn.protocols.rounds import LoopState
from gossiplearn.protocols.signing import Signer, history_statement, params_digest
from gossiplearn.protocols.sybilwall_messages import HistoryRecord
from gossiplearn.types import Params, PeerId


class AttackerCore:
    """Wraps ``inner``. In the simulator it reports no rounds (attackers are left out of the
    metrics); a real attacking peer keeps its rounds (``report=True``) to show progress."""

    def __init__(
        self,
        inner: Core,
        attack: Attack,
        rng: np.random.Generator,
        identities: Mapping[PeerId, Sequence[PeerId]] | None = None,
        *,
        report: bool = False,
    ) -> None:
        self.inner = inner
        self.reports_rounds = report
        self.attack = attack
        self.rng = rng
        #: identity -> its neighbours; None: send as the inner core decides.
        self.identities = identities
        #: Off (a scenario's attack window not open yet, or closed): it behaves honestly,
        #: and its Sybil identities stay silent.
        self.active = True
        self._before: Params | None = None
        #: What of a (poisoned) model goes out, as honest peers of the protocol send it
        #: (Bristle: the head without its local bias); None: all of it.
        self.outgoing: Callable[[Params], Params] | None = None

    def model_message(self) -> Message | None:
        """What the honest core would send now (greetings, probes), or None."""
        return _greeting(self)

    def handle(self, now: float, event: Event) -> list[Effect]:
        if not self.active:
            hide = not self.reports_rounds
            return [
                e for e in self.inner.handle(now, event) if not (hide and isinstance(e, RoundDone))
            ]
        effects: list[Effect] = []
        poisoned: dict[int, ModelMessage] = {}
        for effect in self.inner.handle(now, event):
            match effect:
                case StartTraining(params=params):
                    self._before = params
                    effects.append(effect)
                case Send(message=message) if id(message) in poisoned:
                    if self.identities is None:
                        effects.append(Send(effect.to, poisoned[id(message)]))
                case Send(message=message):
                    sent = poisoned[id(message)] = self._poison(message)
                    if self.identities is None:
                        effects.append(Send(effect.to, sent))
                    else:
                        effects += [
                            Send(to, sent, via=identity)
                            for identity, neighbours in self.identities.items()
                            for to in neighbours
                        ]
                case RoundDone() if not self.reports_rounds:
                    pass  # an attacker's own model is not measured
                case _:
                    effects.append(effect)
        return effects

    def _poison(self, message: ModelMessage) -> ModelMessage:
        params = message.params
        if self.attack.kind == "model" and self._before is not None:
            params = poison_model(self.attack, self._before, params, self.rng)
        if self.outgoing is not None:
            params = self.outgoing(params)
        if params is message.params:
            return message
        return ModelMessage(message.round, params, message.samples)


class IdleCore:
    """A Sybil identity's own core: everything it sends is sent by its attacker."""

    reports_rounds = False

    def handle(self, now: float, event: Event) -> list[Effect]:
        return []


def _greeting(core: AttackerCore) -> Message | None:
    inner = core.inner
    return inner.model_message() if isinstance(inner, LoopState) else None


class Keyring(Protocol):
    """The keys of an attacker's identities (seeded in the simulator; a real attacker's
    own transport key)."""

    def signer(self, peer: PeerId) -> Signer: ...


class SigningAttackerCore(AttackerCore):
    """An :class:`AttackerCore` whose model pushes go out as signed SybilWall models
    (a HistoryRecord at distance 0) from the identity that sends them; the signed models
    it receives reach its inner core as plain models, other records are dropped."""

    accepts_any_message = True

    def __init__(
        self,
        me: PeerId,
        keys: Keyring,
        inner: Core,
        attack: Attack,
        rng: np.random.Generator,
        identities: Mapping[PeerId, Sequence[PeerId]] | None = None,
    ) -> None:
        super().__init__(inner, attack, rng, identities)
        self.me = me
        self.keys = keys

    def handle(self, now: float, event: AnyEvent) -> list[Effect]:
        if isinstance(event, MessageReceived) and not isinstance(event.message, ModelMessage):
            record = event.message
            if not isinstance(record, HistoryRecord) or record.distance != 0:
                return []  # relayed histories: of no use to an attacker
            model = ModelMessage(record.round, record.params)
            event = MessageReceived(event.sender, model)
        signed: dict[tuple[PeerId, int], HistoryRecord] = {}
        effects: list[Effect] = []
        for effect in super().handle(now, event):  # type: ignore[arg-type]
            if isinstance(effect, Send) and isinstance(effect.message, ModelMessage):
                origin = self.me if effect.via is None else effect.via
                key = (origin, id(effect.message))
                if key not in signed:
                    signed[key] = self._sign(origin, effect.message)
                # A SybilWall core takes these records; a plain Core's list holds them too.
                effects.append(Send(effect.to, signed[key], effect.via))  # type: ignore[arg-type]
            else:
                effects.append(effect)
        return effects

    def model_message(self) -> Message | None:
        message = _greeting(self)
        return self._sign(self.me, message) if isinstance(message, ModelMessage) else message

    def _sign(self, origin: PeerId, message: ModelMessage) -> HistoryRecord:
        statement = history_statement(origin, message.round, params_digest(message.params))
        signature = self.keys.signer(origin).sign(statement)
        record = HistoryRecord(message.round, origin, 0, message.params, signature)
        return record.knowing_statement(statement)
