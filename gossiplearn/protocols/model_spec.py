"""The model's architecture on the wire: what peers exchange when they connect.

Two peers that run different models (another ``--model``, or a dataset with other input
shapes or classes) cannot merge anything. Each tells the other its :data:`ModelSpec`
(tensor names, dtypes and shapes, in model order) as soon as they connect, so a mismatch
is found before any model is sent, and said once, naming the first tensor that differs.

Wire form: a msgpack list of ``[name, dtype, shape]``. :func:`decode_spec` treats it as
hostile, like every decoder here: bounded size, counts and strings, whitelisted dtypes,
and only :class:`~gossiplearn.errors.MalformedMessage` escapes.
"""

from __future__ import annotations

import msgpack

from gossiplearn.errors import MalformedMessage
from gossiplearn.protocols.codec import MAX_STR_LEN, MAX_TENSORS, unpack_bounded
from gossiplearn.protocols.messages import WIRE_DTYPES, ModelSpec

#: Largest spec accepted, in bytes (a model of MAX_TENSORS tensors with long names fits).
MAX_SPEC_BYTES = 1 << 20
_MAX_DIMS = 64


def encode_spec(spec: ModelSpec) -> bytes:
    return msgpack.packb([[name, dtype, list(shape)] for name, (dtype, shape) in spec.items()])


def decode_spec(data: bytes) -> ModelSpec:
    """The spec in ``data``; MalformedMessage for anything else."""
    if len(data) > MAX_SPEC_BYTES:
        raise MalformedMessage(f"model spec of {len(data)} bytes (at most {MAX_SPEC_BYTES})")
    entries = unpack_bounded(
        data, "model spec", max_str_len=MAX_STR_LEN, max_array_len=MAX_TENSORS, max_map_len=0
    )
    if not isinstance(entries, list):
        raise MalformedMessage("model spec must be a list of [name, dtype, shape]")
    spec: ModelSpec = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)):
            raise MalformedMessage("model spec entries must be [name, dtype, shape]")
        name, dtype, shape = entry
        if dtype not in WIRE_DTYPES:
            raise MalformedMessage(f"model spec: tensor {name!r:.80} has dtype {dtype!r:.20}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise MalformedMessage(f"model spec: tensor {name!r:.80} has no valid shape")
        if name in spec:
            raise MalformedMessage(f"model spec names tensor {name!r:.80} twice")
        spec[name] = (dtype, tuple(shape))
    return spec


def first_difference(ours: ModelSpec, theirs: ModelSpec) -> str | None:
    """The first tensor (in our model's order) where the two specs differ, said for a log
    line; None when they are the same architecture."""
    for name, (dtype, shape) in ours.items():
        if name not in theirs:
            return f"it has no tensor {name!r}"
        their_dtype, their_shape = theirs[name]
        if their_shape != shape:
            return f"tensor {name!r} is {list(their_shape)} there, {list(shape)} here"
        if their_dtype != dtype:
            return f"tensor {name!r} is {their_dtype} there, {dtype} here"
    extra = [name for name in theirs if name not in ours]
    if extra:
        return f"it has a tensor {extra[0]!r:.80} this model lacks"
    if list(theirs) != list(ours):
        return "its tensors come in another order"
    return None
