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


# eq=False: holds arrays
@dataclass(frozen=True, eq=False)
class Step:
    """A decoded vector of ``count`` entries: ``values`` at the sorted positions ``at``
    and zeros elsewhere, or all ``count`` values where ``at`` is None."""

    count: int
    at: npt.NDArray[np.int64] | None
    values: Vector

    def dense(self) -> Vector:
        if self.at is None:
            return self.values
        dense = np.zeros(self.count, dtype=np.float32)
        dense[self.at] = self.values
        return dense


# eq=False: holds arrays
@dataclass(frozen=True, eq=False)
class Encoded:
    """A sender's view of one compressed vector: the wire form, and what the receiver
    decodes from it, bit for bit (finite, checked as :func:`decode_vector` checks it)."""

    packed: Packed
    step: Step


def encode_vector(
    vector: Vector, compression: Compression, rng: np.random.Generator, *, sparse: bool = True
) -> Packed:
    """Compress ``vector`` (float32, finite); ``sparse=False`` skips the sparsifier (a full
    model must arrive whole)."""
    return encode_and_decode(vector, compression, rng, sparse=sparse).packed


def encode_and_decode(
    vector: Vector, compression: Compression, rng: np.random.Generator, *, sparse: bool = True
) -> Encoded:
    """:func:`encode_vector`, and the kept values as :func:`decode_vector` will decode them
    at the receiver (the same float32 operations on the same numbers, without parsing the
    bytes back); MalformedMessage where the receiver would find them not finite."""
    count = int(vector.size)
    kept_at: npt.NDArray[np.int64] | None = None
    bits: npt.NDArray[np.bool_] | None = None
    if sparse and compression.sparsifier is not None and compression.fraction < 1.0:
        k = max(1, math.ceil(compression.fraction * count)) if count else 0
        if k < count:
            if compression.sparsifier == "topk":
                kept_at, bits = top_k(vector, k)
            else:
                kept_at = np.sort(rng.choice(count, size=k, replace=False))
    kept = vector if kept_at is None else vector[kept_at]
    values, scales, decoded, finite = _encode_values(
        np.ascontiguousarray(kept, dtype=np.float32), compression
    )
    if not finite and not np.isfinite(decoded).all():
        raise MalformedMessage("compressed model holds NaN or Inf values")
    bitmap = False
    indices = b""
    if kept_at is not None:
        # a bitmap of ceil(count / 8) bytes, or a list of 4 bytes per kept entry: the smaller
        bitmap = math.ceil(count / 8) < 4 * kept_at.size
        if not bitmap:
            indices = kept_at.astype("<u4").tobytes()
        else:
            if bits is None:
                bits = np.zeros(count, dtype=bool)
                bits[kept_at] = True
            indices = np.packbits(bits, bitorder="little").tobytes()
    packed = Packed(count, int(kept.size), bitmap, indices, values, scales)
    if compression.lossless == "zlib":
        packed = Packed(
            packed.count, packed.kept, packed.bitmap,
            _deflate(packed.indices), _deflate(packed.values), _deflate(packed.scales),
        )  # fmt: skip
    return Encoded(packed, Step(count, kept_at, decoded))


#: top_k looks at every TOP_K_SAMPLE-th magnitude first, to narrow the search.
TOP_K_SAMPLE = 16


def top_k(vector: Vector, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_] | None]:
    """The sorted positions of the ``k`` entries of ``vector`` largest in magnitude (``0 <
    k < vector.size``), and the same as a mask of ``vector.size`` booleans (None on the
    slow path).

    Ties: of the entries whose magnitude equals the ``k``-th largest, the lowest positions
    are taken, so the choice is the same on every machine (only the sender chooses; the
    positions travel). Without ties at that magnitude the set is the only top-``k`` one.

    How: a sample (every TOP_K_SAMPLE-th magnitude) gives a bound a little below the
    ``k``-th largest magnitude; one comparison marks the candidates at or above it, and
    if there are at least ``k`` of them (else the bound was too high: all entries are
    candidates), a value-only partition of the candidates finds the ``k``-th largest
    magnitude exactly. The sample only decides how much work that is, never the result:
    a fraction of an index partition and a sort."""
    count = vector.size
    magnitude = np.abs(vector)
    sample = magnitude[::TOP_K_SAMPLE]
    rank = min(sample.size, math.ceil(sample.size * k / count * 1.2) + 16)
    bound = np.partition(sample, sample.size - rank)[sample.size - rank]
    keep = magnitude >= bound
    at = np.flatnonzero(keep)
    if at.size < k:  # the bound was too high (or NaN): every entry is a candidate
        keep[:] = True
        at = np.arange(count, dtype=np.int64)
    candidates = magnitude[at]
    threshold = np.partition(candidates, at.size - k)[at.size - k]
    chosen = candidates >= threshold
    extra = int(np.count_nonzero(chosen)) - k
    if extra < 0:  # NaN (never in a finite vector): rank as an index partition ranks
        return np.sort(np.argpartition(magnitude, count - k)[count - k :]), None
    if extra > 0:  # ties at the threshold: keep the lowest positions among them
        tied = np.flatnonzero(candidates == threshold)
        chosen[tied[tied.size - extra :]] = False
    keep[at[~chosen]] = False
    return at[chosen], keep


def decode_vector(packed: Packed, compression: Compression, count: int) -> Vector:
    """The dense float32 vector of ``count`` entries ``packed`` stands for (zeros where
    nothing was sent); MalformedMessage for anything inconsistent or non-finite."""
    return decode_step(packed, compression, count).dense()


def decode_step(packed: Packed, compression: Compression, count: int) -> Step:
    """:func:`decode_vector` before it is made dense: the values sent and where."""
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
    decoded, finite = _decode_values(values, scales, compression, kept)
    if not finite and not np.isfinite(decoded).all():
        raise MalformedMessage("compressed model holds NaN or Inf values")
    if not sparse:
        return Step(count, None, decoded)
    return Step(count, _positions(indices, packed.bitmap, kept, count), decoded)


def add_step(reference: Vector, step: Step, signed_zeros: bool = True) -> Vector:
    """``reference + step.dense()``, bit for bit, in place in ``reference``: where nothing
    was sent ``x + 0.0`` (which turns -0.0 into 0.0), where something was ``x + value``.
    Sender and receiver both update their copy of a shared reference with it.

    ``signed_zeros`` False (the caller knows ``reference`` holds no -0.0, where ``x + 0.0``
    is ``x``) skips that pass over the entries not sent. int8 never decodes to -0.0
    (``min + code * step`` with ``code * step >= +0``, and a sum of zeros is -0.0 only if
    both are), so a reference last updated by an int8 step holds none."""
    if step.at is None:
        np.add(reference, step.values, out=reference)
        return reference
    sent = reference[step.at]
    sent += step.values
    if signed_zeros:
        reference += np.float32(0.0)
    reference[step.at] = sent
    return reference


def _positions(indices: bytes, bitmap: bool, kept: int, count: int) -> npt.NDArray[np.int64]:
    if bitmap:
        bits = np.unpackbits(np.frombuffer(indices, dtype=np.uint8), bitorder="little")
        if bits[count:].any():
            raise MalformedMessage("compressed model: index bitmap has bits past the end")
        marked = np.count_nonzero(bits)
        if marked != kept:
            raise MalformedMessage(
                f"compressed model: index bitmap marks {marked} entries, expected {kept}"
            )
        # the 0/1 bytes as booleans: the same positions, found faster than in uint8
        return np.flatnonzero(bits[:count].view(np.bool_))
    at = np.frombuffer(indices, dtype="<u4").astype(np.int64)
    if at.size and (at[-1] >= count or (np.diff(at) <= 0).any()):
        raise MalformedMessage("compressed model: indices not sorted, unique and in range")
    return at


def _encode_values(kept: Vector, compression: Compression) -> tuple[bytes, bytes, Vector, bool]:
    """(values, scales, the values as the receiver decodes them, whether those are known
    to be finite without looking at each)."""
    match compression.values:
        case "float16":
            half = np.clip(kept, -_F16_MAX, _F16_MAX).astype("<f2")
            return half.tobytes(), b"", half.astype(np.float32), False
        case "bfloat16":
            top = _to_bfloat16(kept)
            return top.tobytes(), b"", _from_bfloat16(top), False
        case "int8":
            return _quantise_int8(kept)
    wire = kept.astype("<f4")
    return wire.tobytes(), b"", wire.astype(np.float32, copy=False), False


def _decode_values(
    values: bytes, scales: bytes, compression: Compression, kept: int
) -> tuple[Vector, bool]:
    """The decoded values, and whether they are known to be finite without a full check."""
    match compression.values:
        case "float16":
            return np.frombuffer(values, dtype="<f2").astype(np.float32), False
        case "bfloat16":
            return _from_bfloat16(np.frombuffer(values, dtype="<u2")), False
        case "int8":
            return _dequantise_int8_checked(values, scales, kept)
    return np.frombuffer(values, dtype="<f4").astype(np.float32), False


def _from_bfloat16(top: npt.NDArray[np.uint16]) -> Vector:
    bits = top.astype(np.uint32) << 16
    out: Vector = bits.view(np.float32)
    return out


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


def _blocks(flat: Vector) -> list[Vector]:
    """``flat`` as (blocks, INT8_BLOCK) views: the full blocks, then the partial last one
    (as a row of its own); no copy, no padding."""
    full = flat.size // INT8_BLOCK * INT8_BLOCK
    grids = [flat[:full].reshape(-1, INT8_BLOCK)] if full else []
    if full < flat.size:
        grids.append(flat[full:].reshape(1, -1))
    return grids


def _quantise_int8(values: Vector) -> tuple[bytes, bytes, Vector, bool]:
    """Codes ``rint((v - min) / step)`` clipped to [0, 255] per block of INT8_BLOCK, with
    ``step = (max - min) / 255`` in float64 rounded to float32 (1 where it is 0); and the
    values the receiver decodes, ``min + code * step`` (see :func:`_dequantise_int8`).

    Block by block on views, in place: a partial last block is its own row (the padding
    by its last value that an (n, INT8_BLOCK) grid would need does not change its minimum
    or maximum, and its codes are dropped)."""
    blocks = math.ceil(values.size / INT8_BLOCK)
    low = np.empty(blocks, dtype=np.float32)
    step = np.empty(blocks, dtype=np.float32)
    work = np.empty(values.size, dtype=np.float32)
    row = 0
    for grid, out in zip(_blocks(values), _blocks(work), strict=True):
        rows = slice(row, row + grid.shape[0])
        row += grid.shape[0]
        minimum = grid.min(axis=1)
        maximum = grid.max(axis=1)
        low[rows] = minimum
        step[rows] = (maximum.astype(np.float64) - minimum) / 255.0
        safe = np.where(step[rows] > 0, step[rows], np.float32(1.0)).astype(np.float32)
        np.subtract(grid, minimum[:, None], out=out)
        np.divide(out, safe[:, None], out=out)
        np.rint(out, out=out)
        # float32 rounding is monotonic: a block's largest code is its maximum's, and none
        # is below 0, so the clip to [0, 255] changes nothing unless that one is over 255
        with np.errstate(over="ignore", invalid="ignore"):
            largest = np.rint((maximum - minimum) / safe)
        if not (largest <= 255).all():
            np.clip(out, 0, 255, out=out)
    codes = work.astype(np.uint8).tobytes()
    pairs = np.stack([low, step], axis=1).astype("<f4")
    # the receiver's float32(code) is exactly this float32 code: decode it in place
    _scale_blocks(work, low, step)
    return codes, pairs.tobytes(), work, _int8_finite(low, step)


def _dequantise_int8(values: bytes, scales: bytes, kept: int) -> Vector:
    return _dequantise_int8_checked(values, scales, kept)[0]


def _dequantise_int8_checked(values: bytes, scales: bytes, kept: int) -> tuple[Vector, bool]:
    """``minimum + code * step`` per block, and whether all are known finite (from one
    bound per block, :func:`_int8_finite`)."""
    pairs = np.frombuffer(scales, dtype="<f4").reshape(-1, 2)
    # signbit, not < 0: a step of -0.0 would decode -0.0 entries no honest sender makes
    if not np.isfinite(pairs).all() or np.signbit(pairs[:, 1]).any():
        raise MalformedMessage("compressed model: int8 block scales not finite and >= +0")
    # block by block (a reshape, not a gather by index), in place: the same float32
    # operations, minimum + code * step
    decoded: Vector = np.frombuffer(values, dtype=np.uint8).astype(np.float32)
    low = np.ascontiguousarray(pairs[:, 0], dtype=np.float32)
    step = np.ascontiguousarray(pairs[:, 1], dtype=np.float32)
    _scale_blocks(decoded, low, step)
    return decoded, _int8_finite(low, step)


def _scale_blocks(codes: Vector, low: Vector, step: Vector) -> None:
    """``codes`` (float32) := ``low + codes * step`` per block, in place: a product, then
    a sum, each rounded to float32 (no fused multiply-add), on sender and receiver alike."""
    row = 0
    for grid in _blocks(codes):
        rows = slice(row, row + grid.shape[0])
        row += grid.shape[0]
        np.multiply(grid, step[rows, None], out=grid)
        np.add(grid, low[rows, None], out=grid)


def _int8_finite(low: Vector, step: Vector) -> bool:
    """Whether every ``low + code * step`` (code 0..255) is finite, from one bound per
    block: float32 rounding is monotonic, so with ``step >= 0`` each lies in
    [low, low + 255 * step]."""
    with np.errstate(over="ignore", invalid="ignore"):
        bound = np.multiply(step, np.float32(255.0))
        bound += low
    return bool(np.isfinite(bound).all() and np.isfinite(low).all() and (step >= 0).all())


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
