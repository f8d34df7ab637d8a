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
from gossiplearn.attacks.core import AttackerCore
from gossiplearn.protocols.events import AnyEvent, Core, Effect, MessageReceived, Send
from gossiplearn.protocols.messages import ModelMessage
from gossiplearn.protocols.signing import SeedKeys, history_statement, params_digest
from gossiplearn.protocols.sybilwall_messages import HistoryRecord
from gossiplearn.types import PeerId


@functools.lru_cache(maxsize=8)
def run_keys(seed: int) -> SeedKeys:
    """The keys of the run with ``seed`` (one object, so its verdict cache is shared)."""
    return SeedKeys(seed)


class SigningAttackerCore(AttackerCore):
    """An :class:`AttackerCore` whose model pushes go out as signed SybilWall models
    (a HistoryRecord at distance 0) from the identity that sends them; the signed models
    it receives reach its inner core as plain models, other records are dropped."""

    accepts_any_message = True

    def __init__(
        self,
        me: PeerId,
        keys: SeedKeys,
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

    def _sign(self, origin: PeerId, message: ModelMessage) -> HistoryRecord:
        statement = history_statement(origin, message.round, params_digest(message.params))
        signature = self.keys.signer(origin).sign(statement)
        record = HistoryRecord(message.round, origin, 0, message.params, signature)
        return record.knowing_statement(statement)


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
