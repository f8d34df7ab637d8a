"""Binary wire format: msgpack, never pickle, validated against the local model.

A :class:`~gossiplearn.protocols.messages.ModelMessage` is one msgpack map::

    {"type": 1, "version": 1, "round": int, "samples": int,
     "tensors": [[name, dtype, shape, raw], ...]}

with tensors in model order, ``dtype`` a little-endian ``numpy.dtype.str`` from
:data:`~gossiplearn.protocols.messages.WIRE_DTYPES`, ``shape`` a list of ints and ``raw``
the C-order little-endian bytes.

:func:`decode` treats its input as hostile: it checks the size before parsing, bounds every
msgpack length so a few bytes cannot make it allocate gigabytes, and only ever raises
:class:`~gossiplearn.errors.WireError` subclasses, so a peer can drop a bad message and go on.

Other message types (MoDeST's pings, model transfers with views, adverts; SybilWall's
history records) are msgpack maps with the same ``type`` and ``version`` keys. Each
registers how its fields go on the wire with :func:`register_wire_type`; :func:`encode`
dispatches on the message class and :func:`decode_message` on the type id, with the same
limits and the same promise (only ``WireError`` escapes). :func:`decode` stays the
model-only entry point. Compressed models (``--compression``) are such a registered type,
:mod:`~gossiplearn.protocols.compressed_messages`; with compression ``none`` nothing here
changes.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgpack
import numpy as np
import numpy.typing as npt

from gossiplearn.errors import (
    MalformedMessage,
    MessageTooLarge,
    ModelMismatch,
    NonFiniteModel,
    WireError,
)
from gossiplearn.protocols.messages import (
    MESSAGE_TYPES,
    WIRE_DTYPES,
    Message,
    ModelMessage,
    ModelSpec,
)
from gossiplearn.types import Params

#: Default cap on an encoded message, in bytes.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Most tensors (and shape dimensions) a message may hold. msgpack pre-allocates a list for
#: every array header it reads, so this bounds what nested hostile headers can cost.
MAX_TENSORS = 4096
#: Longest tensor name or dtype string accepted.
MAX_STR_LEN = 4096
#: numpy's own limit on array dimensions.
_MAX_DIMS = 64
_KEYS = frozenset({"type", "version", "round", "samples", "tensors"})
#: A little slack over len(_KEYS) so a map with extra keys gets the clearer "keys" error.
_MAX_MAP_LEN = 16
#: How many offending names an error message lists before summarising.
_MAX_LISTED = 5


def encode(message: Message) -> bytes:
    """Serialise ``message``; raises ``ValueError`` for a tensor dtype that cannot be sent
    or a message class that was never registered (see :func:`register_wire_type`)."""
    return msgpack.packb(message_fields(message), use_bin_type=True)


def message_fields(message: Message) -> dict[str, Any]:
    """The msgpack map :func:`encode` packs for ``message`` (tensors as memoryviews)."""
    if isinstance(message, ModelMessage):
        return {
            "type": message.TYPE_ID,
            "version": message.VERSION,
            "round": int(message.round),
            "samples": int(message.samples),
            "tensors": tensors_to_wire(message.params),
        }
    wire = _WIRE_CLASSES.get(type(message))
    if wire is None:
        raise ValueError(f"{type(message).__name__} is not a registered wire message type")
    return {"type": message.TYPE_ID, "version": message.VERSION, **wire.to_fields(message)}


def encoded_model_size(round: int, samples: int, spec: ModelSpec) -> int:
    """``len(encode(ModelMessage(round, params, samples)))`` for any params of ``spec``,
    without the params: msgpack lengths depend on sizes only, never on the tensor bytes."""
    header = {"type": ModelMessage.TYPE_ID, "version": ModelMessage.VERSION}
    fields = {**header, "round": int(round), "samples": int(samples), "tensors": []}
    empty_list = 1  # msgpack's fixarray header of []
    return (
        len(msgpack.packb(fields, use_bin_type=True))
        - empty_list
        + _tensors_size(tuple(spec.items()))
    )


@functools.lru_cache(maxsize=16)
def _tensors_size(spec: tuple[tuple[str, tuple[str, tuple[int, ...]]], ...]) -> int:
    for name, (dtype, _) in spec:
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {dtype} which cannot be sent")
    entries = [
        [name, dtype, list(shape), bytes(math.prod(shape) * np.dtype(dtype).itemsize)]
        for name, (dtype, shape) in spec
    ]
    return len(msgpack.packb(entries, use_bin_type=True))


def tensors_to_wire(params: Params) -> list[Any]:
    """The ``tensors`` list of a message: ``[[name, dtype, shape, raw], ...]`` in model order."""
    return [_encode_tensor(name, array) for name, array in params.items()]


def tensors_from_wire(value: object, spec: ModelSpec) -> Params:
    """Validate a received ``tensors`` list against ``spec``; arrays are read-only views."""
    if not isinstance(value, list):
        raise MalformedMessage(f"'tensors' must be a list, got {type(value).__name__}")
    return _params(_tensor_entries(value), spec)


def wire_int(value: object, what: str) -> int:
    """``value`` if it is an int >= 0 (not a bool), else :class:`MalformedMessage`."""
    return _non_negative_int(value, what)


M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class WireType(Generic[M]):
    """How one registered message type maps to the fields of its msgpack map."""

    cls: type[M]
    #: The map's keys besides ``type`` and ``version``; a map with other keys is malformed.
    keys: frozenset[str]
    to_fields: Callable[[M], dict[str, Any]]
    #: Builds the message from the checked map; raises WireError for invalid content.
    from_fields: Callable[[dict[str, Any], ModelSpec], M]


_WIRE_TYPES: dict[int, WireType[Any]] = {}
_WIRE_CLASSES: dict[type[Any], WireType[Any]] = {}
#: Modules that register built-in wire types: imported on the first decode_message, so a
#: peer decodes every built-in type whichever protocol modules it happens to import.
_BUILTIN_WIRE_MODULES = (
    "gossiplearn.protocols.modest_messages",
    "gossiplearn.protocols.sybilwall_messages",
    "gossiplearn.protocols.bristle_messages",
    "gossiplearn.protocols.compressed_messages",
)


def register_wire_type(
    cls: type[M],
    keys: frozenset[str],
    to_fields: Callable[[M], dict[str, Any]],
    from_fields: Callable[[dict[str, Any], ModelSpec], M],
) -> None:
    """Teach :func:`encode` and :func:`decode_message` a message type (call at import)."""
    taken = _WIRE_TYPES.get(cls.TYPE_ID)
    if cls.TYPE_ID in MESSAGE_TYPES or (taken is not None and taken.cls is not cls):
        raise ValueError(f"wire type id {cls.TYPE_ID} of {cls.__name__} is already taken")
    if keys & {"type", "version"} or len(keys) + 2 > _MAX_MAP_LEN:
        raise ValueError(f"{cls.__name__}: at most {_MAX_MAP_LEN - 2} keys besides type/version")
    wire = WireType(cls, frozenset(keys), to_fields, from_fields)
    _WIRE_TYPES[cls.TYPE_ID] = wire
    _WIRE_CLASSES[cls] = wire


@functools.cache
def _load_builtin_wire_types() -> None:
    for module in _BUILTIN_WIRE_MODULES:
        importlib.import_module(module)


def decode_message(
    data: bytes, spec: ModelSpec, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Message:
    """Parse and validate a message of any known type; models are checked against ``spec``.

    A :class:`ModelMessage` takes exactly the path of :func:`decode`. Raises
    :class:`MessageTooLarge`, :class:`MalformedMessage`, :class:`ModelMismatch` or
    :class:`NonFiniteModel` -- and nothing else -- for any input bytes.
    """
    _check_size(data, max_bytes)
    try:
        return message_from_fields(_unpack(data, max_bytes), spec)
    except WireError:
        raise
    except Exception as exc:  # a bug, not the peer's fault -- but still never crash the peer
        raise MalformedMessage(
            f"could not decode message ({type(exc).__name__}: {exc!s:.200})"
        ) from exc


def message_from_fields(
    obj: dict[str, Any], spec: ModelSpec, *, allowed: frozenset[int] | None = None
) -> Message:
    """The message an unpacked msgpack map stands for, checked as :func:`decode_message`
    checks it; ``allowed`` limits the type ids taken. Raises WireError subclasses (and, for
    a bug, anything: :func:`decode_message` turns that into MalformedMessage)."""
    _load_builtin_wire_types()
    type_id = _non_negative_int(obj.get("type"), "type id")
    if allowed is not None and type_id not in allowed:
        raise MalformedMessage(f"message type id {type_id} not allowed here")
    if type_id in MESSAGE_TYPES:
        return _model_message(_model_fields(obj), spec)
    wire = _WIRE_TYPES.get(type_id)
    if wire is None:
        known = ", ".join(str(t) for t in sorted({*MESSAGE_TYPES, *_WIRE_TYPES}))
        raise MalformedMessage(f"unknown message type id {type_id} (known: {known})")
    version = _non_negative_int(obj.get("version"), "version")
    if version != wire.cls.VERSION:
        raise MalformedMessage(
            f"unsupported {wire.cls.__name__} version {version} "
            f"(this peer speaks {wire.cls.VERSION})"
        )
    expected = wire.keys | {"type", "version"}
    if obj.keys() != expected:
        raise MalformedMessage(
            f"{wire.cls.__name__} keys are {_listing(sorted(map(str, obj)))}, "
            f"expected {_listing(sorted(expected))}"
        )
    message: Message = wire.from_fields(obj, spec)
    return message


def unpack_map(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Unpack a msgpack map with every length bounded; MalformedMessage otherwise."""
    return _unpack(data, max_bytes)


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise MessageTooLarge(
            f"message is {len(data):,} bytes, over the limit of {max_bytes:,} bytes "
            f"by {len(data) - max_bytes:,}"
        )


def _encode_tensor(name: str, array: npt.NDArray[np.generic]) -> list[Any]:
    if not isinstance(name, str):
        raise ValueError(f"tensor names must be str, got {name!r}")
    array = np.asarray(array)
    wire_dtype = array.dtype.newbyteorder("<")
    if wire_dtype.str not in WIRE_DTYPES:
        raise ValueError(
            f"tensor {name!r} has dtype {array.dtype} which cannot be sent; "
            f"supported: {', '.join(sorted(WIRE_DTYPES))}"
        )
    # astype swaps big-endian data and makes it contiguous, copying only when needed.
    wire = array.astype(wire_dtype, order="C", copy=False)
    # .data is a memoryview: packed as bin without the extra copy tobytes() would make.
    return [name, wire_dtype.str, list(wire.shape), wire.reshape(-1).view(np.uint8).data]


def decode(
    data: bytes, spec: ModelSpec, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ModelMessage:
    """Parse and validate ``data`` against the local model ``spec`` (from ``spec_of``).

    Returned params follow ``spec``'s order. Their arrays are zero-copy views of ``data``
    and therefore **read-only**; copy before modifying in place.

    Raises :class:`MessageTooLarge`, :class:`MalformedMessage`, :class:`ModelMismatch` or
    :class:`NonFiniteModel` -- and nothing else -- for any input bytes.
    """
    _check_size(data, max_bytes)
    try:
        return _model_message(_unpack_fields(data, max_bytes), spec)
    except WireError:
        raise
    except Exception as exc:  # a bug, not the peer's fault -- but still never crash the peer
        raise MalformedMessage(
            f"could not decode message ({type(exc).__name__}: {exc!s:.200})"
        ) from exc


def _model_message(fields: dict[str, Any], spec: ModelSpec) -> ModelMessage:
    params = _params(_tensor_entries(fields["tensors"]), spec)
    return ModelMessage(round=fields["round"], params=params, samples=fields["samples"])


def unpack_bounded(
    data: bytes, what: str, *, max_str_len: int, max_array_len: int, max_map_len: int
) -> Any:
    """Unpack a small control message (no binary fields) with every msgpack length
    bounded; MalformedMessage naming ``what`` if it is not valid msgpack."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_str_len,
            max_bin_len=0,
            max_array_len=max_array_len,
            max_map_len=max_map_len,
            max_ext_len=0,
        )
    except Exception as error:  # msgpack raises many unrelated types on garbage
        raise MalformedMessage(f"{what} is not valid msgpack: {error}") from None


def _unpack_fields(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Unpack the top-level map and check the header fields of a model message."""
    return _model_fields(_unpack(data, max_bytes))


def _unpack(data: bytes, max_bytes: int) -> dict[str, Any]:
    """Unpack the top-level map with every msgpack length bounded."""
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_bytes,
            max_str_len=MAX_STR_LEN,
            max_array_len=MAX_TENSORS,
            max_map_len=_MAX_MAP_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, UnicodeDecodeError, ...
        raise MalformedMessage(f"not valid msgpack ({type(exc).__name__}: {exc!s:.200})") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage(f"expected a msgpack map, got {type(obj).__name__}")
    return obj


def _model_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Check the header fields of a model message's map."""
    type_id = _non_negative_int(obj.get("type"), "type id")
    if type_id not in MESSAGE_TYPES:
        known = ", ".join(str(t) for t in sorted(MESSAGE_TYPES))
        raise MalformedMessage(f"unknown message type id {type_id} (known: {known})")
    cls = MESSAGE_TYPES[type_id]
    version = _non_negative_int(obj.get("version"), "version")
    if version != cls.VERSION:
        raise MalformedMessage(
            f"unsupported {cls.__name__} version {version} (this peer speaks {cls.VERSION})"
        )
    if obj.keys() != _KEYS:
        raise MalformedMessage(
            f"message keys are {_listing(sorted(map(str, obj)))}, "
            f"expected {_listing(sorted(_KEYS))}"
        )
    _non_negative_int(obj["round"], "round")
    _non_negative_int(obj["samples"], "samples")
    if not isinstance(obj["tensors"], list):
        raise MalformedMessage(f"'tensors' must be a list, got {type(obj['tensors']).__name__}")
    return obj


def _non_negative_int(value: object, what: str) -> int:
    # bool is an int subclass, but True is not a round number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"{what} must be an int, got {type(value).__name__}")
    if value < 0:
        raise MalformedMessage(f"{what} must be >= 0, got {value}")
    return value


def _tensor_entries(
    entries: list[Any],
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Check each ``[name, dtype, shape, raw]`` entry's structure; key them by name."""
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, list) or len(entry) != 4:
            raise MalformedMessage(f"tensor entry {index} is not a [name, dtype, shape, raw] list")
        name, dtype, shape, raw = entry
        if not isinstance(name, str):
            raise MalformedMessage(f"tensor entry {index}: name must be a str")
        if name in tensors:
            raise MalformedMessage(f"tensor {_show(name)} appears twice")
        if not isinstance(dtype, str):
            raise MalformedMessage(f"tensor {_show(name)}: dtype must be a str")
        if not isinstance(raw, bytes):
            raise MalformedMessage(f"tensor {_show(name)}: data must be msgpack bin")
        tensors[name] = (dtype, _shape(shape, name), raw)
    return tensors


def _shape(shape: object, name: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise MalformedMessage(f"tensor {_show(name)}: shape must be a list of <= 64 ints")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise MalformedMessage(f"tensor {_show(name)}: shape {shape!r:.100} is not valid")
    return tuple(shape)


def _params(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], spec: ModelSpec) -> Params:
    """Check tensors against ``spec`` and build arrays in spec order."""
    missing = [name for name in spec if name not in tensors]
    unexpected = [name for name in tensors if name not in spec]
    if missing or unexpected:
        # the first shared tensor of another shape first: what a log line names
        parts = [
            f"tensor {_show(name)} is {list(tensors[name][1])} there, {list(spec[name][1])} here"
            for name in spec
            if name in tensors and tensors[name][1] != tuple(spec[name][1])
        ][:1]
        if missing:
            parts.append(f"missing tensors {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_listing(unexpected)}")
        raise ModelMismatch("model does not match the local model: " + "; ".join(parts))
    return {name: _array(name, *tensors[name], expected=spec[name]) for name in spec}


def _array(
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    raw: bytes,
    *,
    expected: tuple[str, tuple[int, ...]],
) -> npt.NDArray[np.generic]:
    expected_dtype, expected_shape = expected
    if dtype not in WIRE_DTYPES:
        raise MalformedMessage(f"tensor {_show(name)}: unsupported dtype {_show(dtype)}")
    if dtype != expected_dtype:
        raise ModelMismatch(f"tensor {_show(name)}: expected dtype {expected_dtype}, got {dtype}")
    if shape != tuple(expected_shape):
        raise ModelMismatch(
            f"tensor {_show(name)}: expected shape {tuple(expected_shape)}, got {shape}"
        )
    np_dtype = np.dtype(dtype)
    size = math.prod(shape)
    if len(raw) != size * np_dtype.itemsize:
        raise MalformedMessage(
            f"tensor {_show(name)}: {len(raw)} data bytes, expected "
            f"{size * np_dtype.itemsize} for shape {shape} of {dtype}"
        )
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape)
    if np_dtype.kind == "f" and not np.isfinite(array).all():
        raise NonFiniteModel(f"tensor {_show(name)} holds NaN or Inf values")
    # Any byte other than 0 or 1 is not a valid numpy bool.
    if np_dtype.kind == "b" and np.frombuffer(raw, dtype=np.uint8).max(initial=0) > 1:
        raise MalformedMessage(f"tensor {_show(name)}: bool data holds bytes other than 0/1")
    return array


def _show(text: str) -> str:
    """Quote peer-supplied text for an error message, cut short so it stays readable."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _listing(names: list[str]) -> str:
    shown = ", ".join(_show(n) for n in names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return f"[{shown}{f', and {more} more' if more > 0 else ''}]"
