"""MoDeST's wire messages: pings, pongs, model transfers carrying views, adverts.

Every message is a msgpack map with the common ``type`` and ``version`` keys, plus::

    Ping (10), Pong (11)    {"round": r̂ of the sender, "nonce": int}
    ModestModel (12)        {"kind": 0 trained | 1 aggregated, "round", "samples",
                             "tensors": as a ModelMessage, "peers": bin, "activity": bin,
                             "signatures": bin}
    MembershipAdvert (13)   {"round": r̂, "index": membership index, "status": 0 JOIN | 1 LEAVE,
                             "signature": bin}

A view (peer id -> activity record) travels as two columns, so that no hostile header can
make the decoder pre-allocate big nested lists: ``peers`` holds the peer ids as consecutive
msgpack scalars (an int in [0, 2^63) or a non-empty str of at most 256 bytes), parsed with
every container forbidden; ``activity`` holds one little-endian int64 triple
(last_active_round, membership_index, status) per peer, in the same order. A view holds at
most :data:`MAX_VIEW_RECORDS` records and no peer twice. ``signatures`` holds, for each
signed record, its row number (little-endian uint32) and the peer's 64-byte signature.

Signatures: a membership change (index, status) is the peer's own word, so the peer signs
:func:`~gossiplearn.protocols.signing.membership_statement` (peer, index, status) and the
signature travels with the advert and with every view record that carries that change.
The initial membership (index 0, JOIN) is given by configuration and needs none;
``last_active`` is what others observed and is not signed. The wire layout only checks
lengths; :class:`~gossiplearn.protocols.modest.ModestCore` verifies.

The codec (:mod:`gossiplearn.protocols.codec`) dispatches to the decoders registered at
the bottom of this module; like every decoder they raise only ``WireError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

import msgpack
import numpy as np

from gossiplearn.errors import MalformedMessage
from gossiplearn.protocols.codec import (
    register_wire_type,
    tensors_from_wire,
    tensors_to_wire,
    wire_int,
)
from gossiplearn.protocols.messages import ModelSpec
from gossiplearn.protocols.signing import SIGNATURE_BYTES, membership_statement
from gossiplearn.types import Params, PeerId

#: Most activity records a view (and so a message) may hold.
MAX_VIEW_RECORDS = 100_000
#: Longest peer id string, in UTF-8 bytes (libp2p ids are about 52 characters).
MAX_PEER_ID_BYTES = 256
#: Peer id ints are in [0, MAX_PEER_ID_INT).
MAX_PEER_ID_INT = 2**63
_RECORD = np.dtype("<i8")
#: One signed view record on the wire: its row, then the signature.
_SIGNED_ROW = np.dtype([("row", "<u4"), ("signature", "V64")])


class Membership(IntEnum):
    """The last membership change a peer announced."""

    JOIN = 0
    LEAVE = 1


class ModelKind(IntEnum):
    TRAINED = 0
    AGGREGATED = 1


@dataclass(frozen=True)
class Activity:
    """What a peer knows of another: the last round it was seen active in, and its most
    recent membership change (``index`` counts the changes it announced), with the peer's
    signature over that change (b"": unsigned, valid only for the initial index 0 JOIN)."""

    last_active: int
    index: int = 0
    status: Membership = Membership.JOIN
    signature: bytes = field(default=b"", repr=False)

    @property
    def needs_signature(self) -> bool:
        """Anything but the configured initial membership must be signed by the peer."""
        return self.index != 0 or self.status != Membership.JOIN


def membership_of(peer: PeerId, record: Activity | MembershipAdvert) -> bytes:
    """What ``peer`` signs for the membership change in ``record``."""
    return membership_statement(peer, record.index, int(record.status))


#: peer id -> activity record.
View = Mapping[PeerId, Activity]


def _check_int(value: object, what: str, limit: int = MAX_PEER_ID_INT) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"{what} must be an int in [0, {limit}), got {value!r}")


def check_peer_id(peer: object) -> None:
    """Raise ``ValueError`` unless ``peer`` can go on the wire as a peer id."""
    if isinstance(peer, str):
        if not 0 < len(peer.encode()) <= MAX_PEER_ID_BYTES:
            raise ValueError(f"peer id strings must be 1..{MAX_PEER_ID_BYTES} bytes")
        return
    _check_int(peer, "a peer id")


@dataclass(frozen=True)
class Ping:
    """Are you there? ``round`` is the sender's round estimate; the Pong echoes ``nonce``."""

    TYPE_ID: ClassVar[int] = 10
    VERSION: ClassVar[int] = 1

    round: int
    nonce: int

    def __post_init__(self) -> None:
        _check_int(self.round, "Ping.round")
        _check_int(self.nonce, "Ping.nonce")


@dataclass(frozen=True)
class Pong:
    """The answer to the Ping with ``nonce``; ``round`` is the responder's round estimate."""

    TYPE_ID: ClassVar[int] = 11
    VERSION: ClassVar[int] = 1

    round: int
    nonce: int

    def __post_init__(self) -> None:
        _check_int(self.round, "Pong.round")
        _check_int(self.nonce, "Pong.nonce")


# eq=False: params is a dict of arrays (see ModelMessage).
@dataclass(frozen=True, eq=False)
class ModestModel:
    """A model transfer with the sender's view.

    ``round`` is the sample index of the receivers: a TRAINED model with round k+1 was
    trained in round k and goes to the aggregators of sample k+1; an AGGREGATED model with
    round k is the start model of round k, for the trainers of sample k. ``view`` is a
    snapshot; ``samples`` weights the model in FedAvg (0: unweighted).
    """

    TYPE_ID: ClassVar[int] = 12
    VERSION: ClassVar[int] = 2

    kind: ModelKind
    round: int
    params: Params = field(repr=False)
    samples: int = 0
    view: View = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ModelKind):
            raise ValueError(f"ModestModel.kind must be a ModelKind, got {self.kind!r}")
        _check_int(self.round, "ModestModel.round")
        _check_int(self.samples, "ModestModel.samples")
        if len(self.view) > MAX_VIEW_RECORDS:
            raise ValueError(f"a view holds at most {MAX_VIEW_RECORDS} records")


@dataclass(frozen=True)
class MembershipAdvert:
    """The sender announces its own membership change number ``index`` (JOIN or LEAVE),
    signed by it (:func:`membership_of`; b"": unsigned)."""

    TYPE_ID: ClassVar[int] = 13
    VERSION: ClassVar[int] = 2

    round: int
    index: int
    status: Membership
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _check_int(self.round, "MembershipAdvert.round")
        _check_int(self.index, "MembershipAdvert.index")
        if not isinstance(self.status, Membership):
            raise ValueError(f"MembershipAdvert.status must be a Membership, got {self.status}")
        _check_signature(self.signature, "MembershipAdvert.signature")


def _check_signature(signature: object, what: str) -> None:
    if not isinstance(signature, bytes) or len(signature) not in (0, SIGNATURE_BYTES):
        raise ValueError(f"{what} must be empty or {SIGNATURE_BYTES} bytes")


# ---- views on the wire -------------------------------------------------------------


def view_to_wire(view: View) -> tuple[bytes, bytes, bytes]:
    """(peers, activity, signatures) columns of ``view``; ``ValueError`` for an invalid
    record."""
    if len(view) > MAX_VIEW_RECORDS:
        raise ValueError(f"a view holds at most {MAX_VIEW_RECORDS} records")
    numbers = np.empty((len(view), 3), dtype=_RECORD)
    packed = []
    signed = []
    for row, (peer, record) in enumerate(view.items()):
        check_peer_id(peer)
        _check_int(record.last_active, "last_active")
        _check_int(record.index, "membership index")
        _check_signature(record.signature, "Activity.signature")
        numbers[row] = (record.last_active, record.index, int(Membership(record.status)))
        packed.append(msgpack.packb(peer, use_bin_type=True))
        if record.signature:
            signed.append((row, record.signature))
    signatures = np.array(signed, dtype=_SIGNED_ROW).tobytes()
    return b"".join(packed), numbers.tobytes(), signatures


def view_from_wire(
    peers: object, activity: object, signatures: object = b""
) -> dict[PeerId, Activity]:
    """Parse the view columns; :class:`MalformedMessage` if anything is off."""
    if not all(isinstance(column, bytes) for column in (peers, activity, signatures)):
        raise MalformedMessage("view columns 'peers', 'activity', 'signatures' must be msgpack bin")
    assert isinstance(peers, bytes) and isinstance(activity, bytes)
    assert isinstance(signatures, bytes)
    if len(activity) % (3 * _RECORD.itemsize):
        raise MalformedMessage(f"view activity of {len(activity)} bytes is not whole records")
    count = len(activity) // (3 * _RECORD.itemsize)
    if count > MAX_VIEW_RECORDS:
        raise MalformedMessage(f"view of {count} records, over the limit {MAX_VIEW_RECORDS}")
    ids = _peer_ids(peers, count)
    numbers = np.frombuffer(activity, dtype=_RECORD).reshape(count, 3)
    if (numbers[:, :2] < 0).any():
        raise MalformedMessage("view holds a negative round or membership index")
    if ((numbers[:, 2] != Membership.JOIN) & (numbers[:, 2] != Membership.LEAVE)).any():
        raise MalformedMessage("view holds a membership status other than 0 (JOIN) or 1 (LEAVE)")
    signature_of = _signatures(signatures, count)
    view: dict[PeerId, Activity] = {}
    for row, (peer, (last, index, status)) in enumerate(zip(ids, numbers.tolist(), strict=True)):
        if peer in view:
            raise MalformedMessage(f"view lists peer {peer!r:.80} twice")
        view[peer] = Activity(last, index, Membership(status), signature_of.get(row, b""))
    return view


def _signatures(data: bytes, count: int) -> dict[int, bytes]:
    """Row -> signature from the ``signatures`` column of a view of ``count`` records."""
    if len(data) % _SIGNED_ROW.itemsize:
        raise MalformedMessage(f"view signatures of {len(data)} bytes are not whole entries")
    entries = np.frombuffer(data, dtype=_SIGNED_ROW)
    if len(entries) > count:
        raise MalformedMessage("view has more signatures than records")
    rows = entries["row"].tolist()
    if any(row >= count for row in rows) or len(set(rows)) != len(rows):
        raise MalformedMessage("view signatures name rows that are missing or repeated")
    return {row: entry["signature"].tobytes() for row, entry in zip(rows, entries, strict=True)}


def _peer_ids(data: bytes, count: int) -> list[PeerId]:
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=max(len(data), 1),
        max_str_len=MAX_PEER_ID_BYTES,
        max_bin_len=0,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    unpacker.feed(data)
    ids: list[PeerId] = []
    try:
        for item in unpacker:
            if len(ids) == count:
                raise MalformedMessage("view has more peer ids than activity records")
            ids.append(_peer_id(item))
    except MalformedMessage:
        raise
    except Exception as exc:  # msgpack's ValueError, UnicodeDecodeError, ...
        raise MalformedMessage(f"view peer ids are not valid ({type(exc).__name__})") from exc
    if unpacker.tell() != len(data) or len(ids) != count:
        raise MalformedMessage(f"view has {len(ids)} whole peer ids for {count} records")
    return ids


def _peer_id(item: object) -> PeerId:
    if isinstance(item, str) and item:
        return item  # the unpacker already bounds the length
    if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < MAX_PEER_ID_INT:
        return item
    raise MalformedMessage(f"a peer id must be a non-empty str or an int >= 0, got {item!r:.80}")


# ---- registration with the codec ---------------------------------------------------


def _ping_fields(message: Ping | Pong) -> dict[str, Any]:
    return {"round": message.round, "nonce": message.nonce}


def _ping_from(fields: dict[str, Any], spec: ModelSpec) -> Ping:
    return Ping(_bounded(fields["round"], "round"), _bounded(fields["nonce"], "nonce"))


def _pong_from(fields: dict[str, Any], spec: ModelSpec) -> Pong:
    return Pong(_bounded(fields["round"], "round"), _bounded(fields["nonce"], "nonce"))


def _model_fields(message: ModestModel) -> dict[str, Any]:
    peers, activity, signatures = view_to_wire(message.view)
    return {
        "kind": int(message.kind),
        "round": message.round,
        "samples": message.samples,
        "tensors": tensors_to_wire(message.params),
        "peers": peers,
        "activity": activity,
        "signatures": signatures,
    }


def _model_from(fields: dict[str, Any], spec: ModelSpec) -> ModestModel:
    kind = wire_int(fields["kind"], "kind")
    if kind not in (ModelKind.TRAINED, ModelKind.AGGREGATED):
        raise MalformedMessage(f"model kind must be 0 (trained) or 1 (aggregated), got {kind}")
    round_ = _bounded(fields["round"], "round")
    samples = _bounded(fields["samples"], "samples")
    view = view_from_wire(fields["peers"], fields["activity"], fields["signatures"])
    params = tensors_from_wire(fields["tensors"], spec)
    return ModestModel(ModelKind(kind), round_, params, samples, view)


def _bounded(value: object, what: str) -> int:
    number = wire_int(value, what)
    if number >= MAX_PEER_ID_INT:
        raise MalformedMessage(f"{what} must be below 2^63, got {number}")
    return number


def _advert_fields(message: MembershipAdvert) -> dict[str, Any]:
    return {
        "round": message.round,
        "index": message.index,
        "status": int(message.status),
        "signature": message.signature,
    }


def _advert_from(fields: dict[str, Any], spec: ModelSpec) -> MembershipAdvert:
    status = wire_int(fields["status"], "status")
    if status not in (Membership.JOIN, Membership.LEAVE):
        raise MalformedMessage(f"membership status must be 0 (JOIN) or 1 (LEAVE), got {status}")
    signature = fields["signature"]
    if not isinstance(signature, bytes) or len(signature) not in (0, SIGNATURE_BYTES):
        raise MalformedMessage(f"signature must be empty or {SIGNATURE_BYTES} bytes of bin")
    return MembershipAdvert(
        _bounded(fields["round"], "round"),
        _bounded(fields["index"], "index"),
        Membership(status),
        signature,
    )


register_wire_type(Ping, frozenset({"round", "nonce"}), _ping_fields, _ping_from)
register_wire_type(Pong, frozenset({"round", "nonce"}), _ping_fields, _pong_from)
register_wire_type(
    ModestModel,
    frozenset({"kind", "round", "samples", "tensors", "peers", "activity", "signatures"}),
    _model_fields,
    _model_from,
)
register_wire_type(
    MembershipAdvert,
    frozenset({"round", "index", "status", "signature"}),
    _advert_fields,
    _advert_from,
)
