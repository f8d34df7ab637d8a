"""An attacker as a wrapper around an honest protocol core.

The attacker runs the honest protocol (so it follows the network like any peer) but lies
in what it sends: a model attack replaces each outgoing model with a poisoned one
(:func:`~gossiplearn.attacks.model.poison_model`), relative to the model its local
training started from. A Sybil attacker controls several identities: every model it
sends goes out once from each identity to that identity's neighbours, so honest peers
receive the same model from many "different" peers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gossiplearn.attacks.model import poison_model
from gossiplearn.attacks.spec import Attack
from gossiplearn.protocols.events import Core, Effect, Event, RoundDone, Send, StartTraining
from gossiplearn.protocols.messages import ModelMessage
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
        if self.attack.kind != "model" or self._before is None:
            return message
        params = poison_model(self.attack, self._before, message.params, self.rng)
        return ModelMessage(message.round, params, message.samples)


class IdleCore:
    """A Sybil identity's own core: everything it sends is sent by its attacker."""

    reports_rounds = False

    def handle(self, now: float, event: Event) -> list[Effect]:
        return []
