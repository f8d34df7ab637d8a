"""SybilWall's wire message: a gossiped history record.

A :class:`HistoryRecord` is a msgpack map with the common ``type`` (20) and ``version``
keys, plus::

    {"round": int, "origin": peer id, "distance": int, "tensors": as a ModelMessage,
     "signature": bin}

``origin`` is the peer the history belongs to, a msgpack int in [0, 2^63) or a non-empty
str of at most 256 UTF-8 bytes; ``distance`` is the sender's hop count to ``origin``
(0: the sender's own model, 1: a direct neighbour of the sender), at most
:data:`MAX_DISTANCE`; ``tensors`` is the history, shaped like the model and checked
against the local model spec (names, dtypes, shapes, finite values) exactly as a model
is. ``signature`` is empty (unsigned) or ``origin``'s 64-byte Ed25519 signature over
:func:`~gossiplearn.protocols.signing.history_statement` (origin, round, digest of the
tensors): relays cannot forge or alter another peer's history. The wire layout checks
only its length; receivers verify it (see :class:`~gossiplearn.protocols.sybilwall.SybilWallCore`).

The codec (:mod:`gossiplearn.protocols.codec`) dispatches to the decoder registered at the
bottom of this module; like every decoder it raises only ``WireError`` subclasses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gossiplearn.errors import MalformedMessage
from gossiplearn.protocols.codec import (
    register_wire_type,
    tensors_from_wire,
    tensors_to_wire,
    wire_int,
)
from gossiplearn.protocols.messages import ModelSpec
from gossiplearn.protocols.modest_messages import MAX_PEER_ID_INT, check_peer_id
from gossiplearn.protocols.signing import SIGNATURE_BYTES, history_statement, params_digest
from gossiplearn.types import Params, PeerId

#: Largest hop count a record may carry; records farther away are of no use.
MAX_DISTANCE = 1024


# eq=False: params is a dict of arrays (see ModelMessage).
@dataclass(frozen=True, eq=False)
class HistoryRecord:
    """The history of peer ``origin`` as the sender knows it: last updated in round
    ``round``, ``distance`` hops from the sender (0: the sender itself, 1: the sender's
    direct neighbour), with ``origin``'s signature (empty: unsigned)."""

    TYPE_ID: ClassVar[int] = 20
    VERSION: ClassVar[int] = 2

    round: int
    origin: PeerId
    distance: int
    params: Params = field(repr=False)
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        # Fail at the sender, where the bug is, rather than at every receiver.
        if isinstance(self.round, bool) or not isinstance(self.round, int):
            raise ValueError(f"HistoryRecord.round must be an int, got {self.round!r}")
        if not 0 <= self.round < MAX_PEER_ID_INT:
            raise ValueError(f"HistoryRecord.round must be in [0, 2^63), got {self.round}")
        check_peer_id(self.origin)
        distance = self.distance
        if isinstance(distance, bool) or not isinstance(distance, int):
            raise ValueError(f"HistoryRecord.distance must be an int, got {distance!r}")
        if not 0 <= distance <= MAX_DISTANCE:
            raise ValueError(f"HistoryRecord.distance must be in [0, {MAX_DISTANCE}]")
        if len(self.signature) not in (0, SIGNATURE_BYTES):
            raise ValueError(f"HistoryRecord.signature must be 0 or {SIGNATURE_BYTES} bytes")

    # Computed once per record object: a simulator hands one record to many receivers.
    @functools.cached_property
    def statement(self) -> bytes:
        """What ``origin`` signs for this record (see :func:`history_statement`)."""
        return history_statement(self.origin, self.round, params_digest(self.params))

    def knowing_statement(self, statement: bytes) -> HistoryRecord:
        """This record, with its :attr:`statement` already known (computed for the same
        origin, round and params): hashing a model once per record is enough."""
        self.__dict__["statement"] = statement  # fills the cached_property
        return self


def _record_fields(message: HistoryRecord) -> dict[str, Any]:
    return {
        "round": message.round,
        "origin": message.origin,
        "distance": message.distance,
        "tensors": tensors_to_wire(message.params),
        "signature": message.signature,
    }


def _record_from(fields: dict[str, Any], spec: ModelSpec) -> HistoryRecord:
    round_ = wire_int(fields["round"], "round")
    if round_ >= MAX_PEER_ID_INT:
        raise MalformedMessage(f"round must be below 2^63, got {round_}")
    distance = wire_int(fields["distance"], "distance")
    if not 0 <= distance <= MAX_DISTANCE:
        raise MalformedMessage(f"distance must be in [0, {MAX_DISTANCE}], got {distance}")
    signature = fields["signature"]
    if not isinstance(signature, bytes) or len(signature) not in (0, SIGNATURE_BYTES):
        raise MalformedMessage(f"signature must be empty or {SIGNATURE_BYTES} bytes of bin")
    origin = fields["origin"]
    if isinstance(origin, bool) or not isinstance(origin, int | str):
        raise MalformedMessage(f"origin must be a peer id (int or str), got {origin!r:.80}")
    try:
        check_peer_id(origin)
    except ValueError as exc:
        raise MalformedMessage(f"origin {origin!r:.80} is not a valid peer id: {exc}") from None
    params = tensors_from_wire(fields["tensors"], spec)
    return HistoryRecord(round_, origin, distance, params, signature)


register_wire_type(
    HistoryRecord,
    frozenset({"round", "origin", "distance", "tensors", "signature"}),
    _record_fields,
    _record_from,
)
