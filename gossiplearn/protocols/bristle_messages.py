"""Bristle's wire message on real peers: a head, stamped with the extractor it fits.

A Bristle head is only meaningful on top of the frozen extractor it was trained on: a
head from a peer with another extractor has the right shape and sane values, so no
model check would catch it, and merging it would be silent garbage. So every head a real
Bristle peer sends carries the fingerprint of its extractor, and a receiver takes a head
only when the fingerprint is its own (see :mod:`gossiplearn.peer.bristle_setup`).

A :class:`StampedHead` is a msgpack map with the common ``type`` (30) and ``version``
keys, plus::

    {"round": int, "samples": int, "tensors": as a ModelMessage, "extractor": str}

``extractor`` is exactly :data:`FINGERPRINT_CHARS` lowercase hex digits. The simulator's
Bristle peers all share one extractor by construction and send plain ModelMessages.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gossiplearn.errors import MalformedMessage
from gossiplearn.protocols.codec import (
    register_wire_type,
    tensors_from_wire,
    tensors_to_wire,
    wire_int,
)
from gossiplearn.protocols.messages import ModelMessage, ModelSpec
from gossiplearn.types import Params

#: Hex digits of an extractor fingerprint (a truncated SHA-256: 64 bits).
FINGERPRINT_CHARS = 16


def is_fingerprint(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == FINGERPRINT_CHARS
        and all(c in string.hexdigits[:16] for c in value)
    )


# eq=False: params is a dict of arrays (see ModelMessage).
@dataclass(frozen=True, eq=False)
class StampedHead:
    """A :class:`ModelMessage` whose head was trained on extractor ``extractor``."""

    TYPE_ID: ClassVar[int] = 30
    VERSION: ClassVar[int] = 1

    round: int
    params: Params = field(repr=False)
    samples: int
    extractor: str

    def __post_init__(self) -> None:
        # Fail at the sender, where the bug is, rather than at every receiver.
        if not is_fingerprint(self.extractor):
            raise ValueError(
                f"StampedHead.extractor must be {FINGERPRINT_CHARS} lowercase hex digits, "
                f"got {self.extractor!r:.80}"
            )
        ModelMessage(self.round, self.params, self.samples)  # the same checks

    @classmethod
    def stamp(cls, message: ModelMessage, extractor: str) -> StampedHead:
        return cls(message.round, message.params, message.samples, extractor)

    def model(self) -> ModelMessage:
        return ModelMessage(self.round, self.params, self.samples)


def _head_fields(message: StampedHead) -> dict[str, Any]:
    return {
        "round": message.round,
        "samples": message.samples,
        "tensors": tensors_to_wire(message.params),
        "extractor": message.extractor,
    }


def _head_from(fields: dict[str, Any], spec: ModelSpec) -> StampedHead:
    extractor = fields["extractor"]
    if not is_fingerprint(extractor):
        raise MalformedMessage(
            f"extractor must be {FINGERPRINT_CHARS} lowercase hex digits, got {extractor!r:.80}"
        )
    round_ = wire_int(fields["round"], "round")
    samples = wire_int(fields["samples"], "samples")
    return StampedHead(round_, tensors_from_wire(fields["tensors"], spec), samples, extractor)


register_wire_type(
    StampedHead,
    frozenset({"round", "samples", "tensors", "extractor"}),
    _head_fields,
    _head_from,
)
