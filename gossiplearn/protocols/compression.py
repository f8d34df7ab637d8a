"""Lossy and lossless codecs for model vectors: the stages of ``--compression SPEC``.

A spec is ``none`` or a chain of stages joined by ``+``, in this order, each at most once:

1. a sparsifier: ``topk:F`` (the ``F`` share of entries largest in magnitude) or
   ``random:F`` (a random ``F`` share), ``0 < F <= 1``;
2. a value codec: ``float16``, ``bfloat16`` or ``int8`` (blockwise affine, blocks of
   :data:`INT8_BLOCK` values, each with its own float32 minimum and step);
3. a lossless stage: ``zlib`` (the standard library's; no new dependency, and it bounds
   what it inflates with ``max_length``).

Without a value codec values travel as float32. Stated error bounds, per entry sent:
float32 exact; float16 ``|err| <= 2**-11 * |v|`` (and ``<= 2**-25`` below 2**-14), values
clipped to +-65504; bfloat16 ``|err| <= 2**-8 * |v|``; int8 ``|err| <= step / 2`` with
``step = (block max - block min) / 255``. Entries a sparsifier leaves out are not sent at
all: :mod:`~gossiplearn.protocols.feedback` keeps them in the difference for next time.

:func:`encode_vector` turns a float32 vector into a :class:`Packed` (plain bytes fields);
:func:`decode_vector` checks a received one as strictly as the model codec does (sizes,
sorted unique in-range indices, counts, finite values, bounded inflation) and raises only
:class:`~gossiplearn.errors.MalformedMessage`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gossiplearn.errors import MalformedMessage

INT8_BLOCK = 256
SPARSIFIERS = ("topk", "random")
VALUE_CODECS = ("float16", "bfloat16", "int8")
LOSSLESS = ("zlib",)
ALLOWED = "none, or a chain joined by '+' of topk:F | random:F, then float16 | bfloat16 | int8, then zlib (0 < F <= 1)"  # noqa: E501
#: Longest spec string accepted from the wire.
MAX_SPEC_LEN = 64
_F16_MAX = float(np.finfo(np.float16).max)

Vector = npt.NDArray[np.float32]


class SpecError(ValueError):
    """A compression spec that cannot be used; the message says what is allowed."""


@dataclass(frozen=True)
class Compression:
    """A parsed spec: each stage or None."""

    sparsifier: str | None = None
    fraction: float = 1.0
    values: str | None = None
    lossless: str | None = None

    @property
    def enabled(self) -> bool:
        return self != NONE

    def __str__(self) -> str:
        stages = []
        if self.sparsifier is not None:
            stages.append(f"{self.sparsifier}:{self.fraction:g}")
        stages += [s for s in (self.values, self.lossless) if s is not None]
        return "+".join(stages) or "none"


NONE = Compression()


def parse_compression(spec: str) -> Compression:
    """Parse ``spec``; :class:`SpecError` names it and what is allowed."""
    text = spec.strip().lower()
    if text == "none":
        return NONE
    if not text or len(text) > MAX_SPEC_LEN:
        raise SpecError(f"compression {spec!r:.80}: expected {ALLOWED}")
    found: dict[int, str] = {}
    sparsifier, fraction, values, lossless = None, 1.0, None, None
    for stage in text.split("+"):
        name, _, arg = stage.partition(":")
        if name in SPARSIFIERS:
            order = 0
            fraction = _fraction(spec, stage, arg)
            sparsifier = name
        elif name in VALUE_CODECS or name in LOSSLESS:
            if arg:
                raise SpecError(f"compression {spec!r}: stage {stage!r} takes no argument")
            order = 1 if name in VALUE_CODECS else 2
            if order == 1:
                values = name
            else:
                lossless = name
        else:
            raise SpecError(f"compression {spec!r}: unknown stage {stage!r}; expected {ALLOWED}")
        if order in found:
            raise SpecError(
                f"compression {spec!r}: {found[order]!r} and {stage!r} do the same job; "
                f"use one of them ({ALLOWED})"
            )
        if found and max(found) > order:
            raise SpecError(
                f"compression {spec!r}: {stage!r} cannot come after {found[max(found)]!r}; "
                f"the order is sparsifier, then value codec, then zlib"
            )
        found[order] = stage
    return Compression(sparsifier, fraction, values, lossless)


def _fraction(spec: str, stage: str, arg: str) -> float:
    try:
        fraction = float(arg)
    except ValueError:
        raise SpecError(
            f"compression {spec!r}: {stage!r} needs a fraction, e.g. topk:0.1"
        ) from None
    if not (0.0 < fraction <= 1.0) or not math.isfinite(fraction):
        raise SpecError(f"compression {spec!r}: the fraction in {stage!r} must be in (0, 1]")
    return fraction


@dataclass(frozen=True)
class Packed:
    """One compressed vector as it travels: ``count`` entries in all, ``kept`` of them sent.

    ``indices``: empty when all are sent, else the kept positions as a sorted uint32 list
    (``bitmap`` False) or a bitmap of ``ceil(count / 8)`` bytes (``bitmap`` True);
    ``values``: the kept values in the value codec; ``scales``: int8's per-block
    (minimum, step) float32 pairs."""

    count: int
    kept: int
    bitmap: bool
    indices: bytes
    values: bytes
    scales: bytes


def encode_vector(
    vector: Vector, compression: Compression, rng: np.random.Generator, *, sparse: bool = True
) -> Packed:
    """Compress ``vector`` (float32, finite); ``sparse=False`` skips the sparsifier (a full
    model must arrive whole)."""
    count = int(vector.size)
    kept_at: npt.NDArray[np.int64] | None = None
    if sparse and compression.sparsifier is not None and compression.fraction < 1.0:
        k = max(1, math.ceil(compression.fraction * count)) if count else 0
        if k < count:
            if compression.sparsifier == "topk":
                kept_at = np.argpartition(np.abs(vector), count - k)[count - k :]
            else:
                kept_at = rng.choice(count, size=k, replace=False)
            kept_at = np.sort(kept_at)
    kept = vector if kept_at is None else vector[kept_at]
    values, scales = _encode_values(np.ascontiguousarray(kept, dtype=np.float32), compression)
    bitmap = False
    indices = b""
    if kept_at is not None:
        as_list = kept_at.astype("<u4").tobytes()
        bits = np.zeros(count, dtype=bool)
        bits[kept_at] = True
        as_bits = np.packbits(bits, bitorder="little").tobytes()
        bitmap = len(as_bits) < len(as_list)
        indices = as_bits if bitmap else as_list
    packed = Packed(count, int(kept.size), bitmap, indices, values, scales)
    if compression.lossless == "zlib":
        packed = Packed(
            packed.count, packed.kept, packed.bitmap,
            _deflate(packed.indices), _deflate(packed.values), _deflate(packed.scales),
        )  # fmt: skip
    return packed


def decode_vector(packed: Packed, compression: Compression, count: int) -> Vector:
    """The dense float32 vector of ``count`` entries ``packed`` stands for (zeros where
    nothing was sent); MalformedMessage for anything inconsistent or non-finite."""
    if packed.count != count:
        raise MalformedMessage(f"compressed model has {packed.count} entries, expected {count}")
    kept = packed.kept
    if not 0 <= kept <= count:
        raise MalformedMessage(f"compressed model keeps {kept} of {count} entries")
    sparse = kept < count or bool(packed.indices)
    index_bytes = (math.ceil(count / 8) if packed.bitmap else 4 * kept) if sparse else 0
    value_bytes = kept * {"float16": 2, "bfloat16": 2, "int8": 1}.get(compression.values or "", 4)
    scale_bytes = 8 * math.ceil(kept / INT8_BLOCK) if compression.values == "int8" else 0
    indices, values, scales = packed.indices, packed.values, packed.scales
    if compression.lossless == "zlib":
        indices = _inflate(indices, index_bytes, "indices")
        values = _inflate(values, value_bytes, "values")
        scales = _inflate(scales, scale_bytes, "scales")
    for what, data, size in (
        ("indices", indices, index_bytes),
        ("values", values, value_bytes),
        ("scales", scales, scale_bytes),
    ):
        if len(data) != size:
            raise MalformedMessage(
                f"compressed model: {len(data)} bytes of {what}, expected {size}"
            )
    decoded = _decode_values(values, scales, compression, kept)
    if not np.isfinite(decoded).all():
        raise MalformedMessage("compressed model holds NaN or Inf values")
    if not sparse:
        return decoded
    at = _positions(indices, packed.bitmap, kept, count)
    dense = np.zeros(count, dtype=np.float32)
    dense[at] = decoded
    return dense


def _positions(indices: bytes, bitmap: bool, kept: int, count: int) -> npt.NDArray[np.int64]:
    if bitmap:
        bits = np.unpackbits(np.frombuffer(indices, dtype=np.uint8), bitorder="little")
        if bits[count:].any():
            raise MalformedMessage("compressed model: index bitmap has bits past the end")
        at = np.flatnonzero(bits[:count])
        if at.size != kept:
            raise MalformedMessage(
                f"compressed model: index bitmap marks {at.size} entries, expected {kept}"
            )
        return at
    at = np.frombuffer(indices, dtype="<u4").astype(np.int64)
    if at.size and (at[-1] >= count or (np.diff(at) <= 0).any()):
        raise MalformedMessage("compressed model: indices not sorted, unique and in range")
    return at


def _encode_values(kept: Vector, compression: Compression) -> tuple[bytes, bytes]:
    match compression.values:
        case "float16":
            return np.clip(kept, -_F16_MAX, _F16_MAX).astype("<f2").tobytes(), b""
        case "bfloat16":
            return _to_bfloat16(kept).tobytes(), b""
        case "int8":
            return _quantise_int8(kept)
    return kept.astype("<f4").tobytes(), b""


def _decode_values(values: bytes, scales: bytes, compression: Compression, kept: int) -> Vector:
    match compression.values:
        case "float16":
            return np.frombuffer(values, dtype="<f2").astype(np.float32)
        case "bfloat16":
            bits = np.frombuffer(values, dtype="<u2").astype(np.uint32) << 16
            return bits.view(np.float32)
        case "int8":
            return _dequantise_int8(values, scales, kept)
    return np.frombuffer(values, dtype="<f4").astype(np.float32)


def _to_bfloat16(values: Vector) -> npt.NDArray[np.uint16]:
    """The upper halves of the float32 bits, rounded to nearest even; a value that would
    round to infinity is clipped to the largest finite bfloat16 instead."""
    bits = values.astype(np.float32).view(np.uint32)
    # in uint32, in place: a sum that wraps past 2**32 only loses a carry out of bit 31,
    # which the cast to uint16 drops anyway (same result as in uint64, a third the work)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded >>= 16
    top = rounded.astype(np.uint16)
    infinite = (top & 0x7FFF) == 0x7F80
    top[infinite] -= 1  # 0x7f7f / 0xff7f: the largest finite magnitude, same sign
    return top.astype("<u2")


def _quantise_int8(values: Vector) -> tuple[bytes, bytes]:
    blocks = math.ceil(values.size / INT8_BLOCK)
    padded = np.zeros(blocks * INT8_BLOCK, dtype=np.float32)
    padded[: values.size] = values
    if values.size:  # pad with the last value so padding does not widen a block's range
        padded[values.size :] = values[-1]
    grid = padded.reshape(blocks, INT8_BLOCK)
    low = grid.min(axis=1)
    step = ((grid.max(axis=1).astype(np.float64) - low) / 255.0).astype(np.float32)
    safe = np.where(step > 0, step, 1.0).astype(np.float32)
    q = np.rint((grid - low[:, None]) / safe[:, None])
    codes = np.clip(q, 0, 255).astype(np.uint8).reshape(-1)[: values.size]
    pairs = np.stack([low, step], axis=1).astype("<f4")
    return codes.tobytes(), pairs.tobytes()


def _dequantise_int8(values: bytes, scales: bytes, kept: int) -> Vector:
    pairs = np.frombuffer(scales, dtype="<f4").reshape(-1, 2)
    if not np.isfinite(pairs).all() or (pairs[:, 1] < 0).any():
        raise MalformedMessage("compressed model: int8 block scales not finite and >= 0")
    # block by block (a reshape, not a gather by index): the same float32 operations,
    # minimum + code * step, an order of magnitude faster
    blocks = math.ceil(kept / INT8_BLOCK)
    flat = np.zeros(blocks * INT8_BLOCK, dtype=np.float32)
    flat[:kept] = np.frombuffer(values, dtype=np.uint8)
    grid = flat.reshape(blocks, INT8_BLOCK)
    decoded = pairs[:blocks, 0:1] + grid * pairs[:blocks, 1:2]
    out: Vector = decoded.reshape(-1)[:kept].astype(np.float32, copy=False)
    return out


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 6) if data else b""


def _inflate(data: bytes, size: int, what: str) -> bytes:
    """Inflate at most ``size`` bytes: a small bomb cannot make us allocate more."""
    if not data:
        return b""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, size)
    except zlib.error as error:
        raise MalformedMessage(f"compressed model: {what} are not valid zlib ({error})") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise MalformedMessage(f"compressed model: {what} inflate to more than {size} bytes")
    return out
