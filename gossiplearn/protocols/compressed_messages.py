"""Wire messages of compressed model transfer (``--compression``).

A :class:`CompressedModel` (type 40) carries any model-carrying message (a
:class:`~gossiplearn.protocols.messages.ModelMessage`, MoDeST's model transfer, a Bristle
head) with its floating-point tensors replaced by one compressed difference::

    {"type": 40, "version": 1, "inner": bin, "codec": spec, "stream": int, "seq": int,
     "count": int, "kept": int, "bitmap": bool, "indices": bin, "values": bin,
     "scales": bin}

``inner`` is the msgpack map of the carried message with its floating-point tensors left
out of ``tensors`` (other tensors travel there exactly). The floating-point tensors, in
model order and flattened to one float32 vector, are ``reference + difference``, where
the difference is the :class:`~gossiplearn.protocols.compression.Packed` vector and the
reference is the one named by (``stream``, ``seq - 1``); ``seq`` 0 means the zero
reference (a full model). See :mod:`gossiplearn.protocols.feedback`.

A :class:`ReferenceMissing` (type 41), ``{"stream": int}``, tells a sender that its
message of ``stream`` could not be applied: it starts over with a full model.

Decoding checks everything that does not need the reference: the codec spec, the packed
vector (sizes, indices, counts, finite values, bounded inflation) and that ``inner`` is a
bounded map of a model-carrying type; the rebuilt message is checked again by the type's
own decoder (:func:`rebuild`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import MalformedMessage, WireError
from gossiplearn.protocols.codec import (
    message_from_fields,
    register_wire_type,
    unpack_map,
    wire_int,
)
from gossiplearn.protocols.compression import (
    Compression,
    Packed,
    SpecError,
    Step,
    decode_step,
    parse_compression,
)
from gossiplearn.protocols.messages import Message, ModelSpec

_KEYS = [
    "inner",
    "codec",
    "stream",
    "seq",
    "count",
    "kept",
    "bitmap",
    "indices",
    "values",
    "scales",
]
#: Stream ids are in [1, MAX_STREAM).
MAX_STREAM = 2**63
#: Type ids a CompressedModel may carry: plain models, MoDeST's model transfers, Bristle
#: heads. SybilWall's signed history records are not among them (signed bytes are relayed).
CARRIED_TYPES = frozenset({1, 12, 30})


def float_tensors(spec: ModelSpec) -> list[str]:
    """The tensors that travel in the compressed vector: the floating-point ones."""
    return [name for name, (dtype, _) in spec.items() if np.dtype(dtype).kind == "f"]


def vector_size(spec: ModelSpec) -> int:
    return sum(math.prod(spec[name][1]) for name in float_tensors(spec))


# eq=False: holds arrays (see ModelMessage).
@dataclass(frozen=True, eq=False)
class CompressedModel:
    """A model-carrying message as a compressed difference from a shared reference."""

    TYPE_ID: ClassVar[int] = 40
    VERSION: ClassVar[int] = 1

    inner: bytes = field(repr=False)
    codec: Compression
    stream: int
    seq: int
    packed: Packed = field(repr=False)
    #: The decoded difference (set by the decoder; the sender leaves it None).
    step: Step | None = field(default=None, repr=False)

    @property
    def difference(self) -> npt.NDArray[np.float32] | None:
        """The decoded difference as a dense vector (None on the sender's side)."""
        return None if self.step is None else self.step.dense()


@dataclass(frozen=True)
class ReferenceMissing:
    """The receiver holds no reference for ``stream``'s last message: send a full model."""

    TYPE_ID: ClassVar[int] = 41
    VERSION: ClassVar[int] = 1

    stream: int


def rebuild(message: CompressedModel, vector: npt.NDArray[np.float32], spec: ModelSpec) -> Message:
    """The carried message, its floating-point tensors taken from ``vector``; checked by
    the carried type's own decoder (WireError subclasses only, for a valid vector)."""
    try:
        obj = unpack_map(message.inner)
        tensors = obj.get("tensors")
        if not isinstance(tensors, list):
            raise MalformedMessage("compressed model: inner message has no tensors list")
        offset = 0
        for name in float_tensors(spec):
            dtype, shape = spec[name]
            size = math.prod(shape)
            # one copy: the bytes (astype copies only for a dtype other than float32)
            array = vector[offset : offset + size].astype(dtype, copy=False)
            offset += size
            tensors.append([name, dtype, list(shape), array.tobytes()])
        return message_from_fields(obj, spec, allowed=CARRIED_TYPES)
    except WireError:
        raise
    except Exception as exc:  # a bug, not the peer's fault -- but never crash the peer
        raise MalformedMessage(
            f"could not rebuild compressed model ({type(exc).__name__}: {exc!s:.200})"
        ) from exc


def _fields(message: CompressedModel) -> dict[str, Any]:
    packed = message.packed
    return {
        "inner": message.inner,
        "codec": str(message.codec),
        "stream": message.stream,
        "seq": message.seq,
        "count": packed.count,
        "kept": packed.kept,
        "bitmap": packed.bitmap,
        "indices": packed.indices,
        "values": packed.values,
        "scales": packed.scales,
    }


def _from(fields: dict[str, Any], spec: ModelSpec) -> CompressedModel:
    codec_text = fields["codec"]
    if not isinstance(codec_text, str):
        raise MalformedMessage("compressed model: codec must be a str")
    try:
        codec = parse_compression(codec_text)
    except SpecError as error:
        raise MalformedMessage(f"compressed model: {error}") from None
    if not codec.enabled:
        raise MalformedMessage("compressed model: codec 'none' is sent as a plain message")
    stream = _stream(fields["stream"])
    seq = wire_int(fields["seq"], "seq")
    if seq >= MAX_STREAM:
        raise MalformedMessage(f"seq must be below 2^63, got {seq}")
    bitmap = fields["bitmap"]
    if not isinstance(bitmap, bool):
        raise MalformedMessage("compressed model: bitmap must be a bool")
    for key in ("inner", "indices", "values", "scales"):
        if not isinstance(fields[key], bytes):
            raise MalformedMessage(f"compressed model: {key} must be msgpack bin")
    count = wire_int(fields["count"], "count")
    kept = wire_int(fields["kept"], "kept")
    packed = Packed(count, kept, bitmap, fields["indices"], fields["values"], fields["scales"])
    step = decode_step(packed, codec, vector_size(spec))
    if seq == 0 and step.count and packed.kept < packed.count:
        raise MalformedMessage("compressed model: a full model (seq 0) must not be sparse")
    _check_inner(fields["inner"])
    return CompressedModel(fields["inner"], codec, stream, seq, packed, step)


def _check_inner(inner: bytes) -> None:
    obj = unpack_map(inner, max_bytes=len(inner))
    type_id = wire_int(obj.get("type"), "inner type id")
    if type_id not in CARRIED_TYPES:
        allowed = ", ".join(map(str, sorted(CARRIED_TYPES)))
        raise MalformedMessage(
            f"compressed model: cannot carry type id {type_id} (allowed: {allowed})"
        )
    if not isinstance(obj.get("tensors"), list):
        raise MalformedMessage("compressed model: inner message has no tensors list")


def _stream(value: object) -> int:
    stream = wire_int(value, "stream")
    if not 1 <= stream < MAX_STREAM:
        raise MalformedMessage(f"stream must be in [1, 2^63), got {stream}")
    return stream


register_wire_type(
    CompressedModel,
    frozenset(_KEYS),
    _fields,
    _from,
)
register_wire_type(
    ReferenceMissing,
    frozenset({"stream"}),
    lambda message: {"stream": message.stream},
    lambda fields, spec: ReferenceMissing(_stream(fields["stream"])),
)
