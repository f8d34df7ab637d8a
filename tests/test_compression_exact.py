"""The fast compression path gives the same bits as the plain formulas it replaced.

Each rewritten function is checked against a straightforward version of what it computes
(the formulas of the first implementation, kept here): int8 quantisation on a padded
(blocks, INT8_BLOCK) grid, top-k by an index partition and a sort, the sender's copy of the
shared reference as ``reference + decode_vector(packed)``. Inputs include zeros, constant
blocks, a partial last block, signed zeros, huge and tiny values, and ties in magnitude.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gossiplearn.errors import MalformedMessage
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.compressed_messages import CompressedModel
from gossiplearn.protocols.compression import (
    INT8_BLOCK,
    Compression,
    Packed,
    Step,
    _dequantise_int8,
    _quantise_int8,
    add_step,
    decode_step,
    decode_vector,
    encode_and_decode,
    encode_vector,
    parse_compression,
    top_k,
)
from gossiplearn.protocols.feedback import ModelLink
from gossiplearn.protocols.messages import ModelMessage, spec_of

SPECS = [
    "zlib",
    "float16",
    "bfloat16",
    "int8",
    "int8+zlib",
    "topk:0.1",
    "topk:0.1+int8",
    "topk:0.01+int8",
    "topk:0.5+float16",
    "random:0.1+int8",
    "random:0.05+bfloat16+zlib",
]


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


# ---- the formulas of the first implementation -------------------------------------------


def _plain_quantise_int8(values: np.ndarray) -> tuple[bytes, bytes]:
    blocks = math.ceil(values.size / INT8_BLOCK)
    padded = np.zeros(blocks * INT8_BLOCK, dtype=np.float32)
    padded[: values.size] = values
    if values.size:
        padded[values.size :] = values[-1]
    grid = padded.reshape(blocks, INT8_BLOCK)
    low = grid.min(axis=1)
    step = ((grid.max(axis=1).astype(np.float64) - low) / 255.0).astype(np.float32)
    safe = np.where(step > 0, step, 1.0).astype(np.float32)
    q = np.rint((grid - low[:, None]) / safe[:, None])
    codes = np.clip(q, 0, 255).astype(np.uint8).reshape(-1)[: values.size]
    pairs = np.stack([low, step], axis=1).astype("<f4")
    return codes.tobytes(), pairs.tobytes()


def _plain_top_k(vector: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.argpartition(np.abs(vector), vector.size - k)[vector.size - k :])


def _plain_encode(vector: np.ndarray, compression: Compression, rng: np.random.Generator) -> Packed:
    """encode_vector as first written (index partition and sort, both index forms built)."""
    count = vector.size
    kept_at = None
    if compression.sparsifier is not None and compression.fraction < 1.0:
        k = max(1, math.ceil(compression.fraction * count)) if count else 0
        if k < count:
            if compression.sparsifier == "topk":
                kept_at = _plain_top_k(vector, k)
            else:
                kept_at = np.sort(rng.choice(count, size=k, replace=False))
    kept = vector if kept_at is None else vector[kept_at]
    match compression.values:
        case "int8":
            values, scales = _plain_quantise_int8(kept)
        case "float16":
            values, scales = np.clip(kept, -65504, 65504).astype("<f2").tobytes(), b""
        case None:
            values, scales = kept.astype("<f4").tobytes(), b""
        case _:
            values, scales = (
                encode_vector(kept, parse_compression(compression.values), rng).values,
                b"",
            )
    bitmap, indices = False, b""
    if kept_at is not None:
        as_list = kept_at.astype("<u4").tobytes()
        bits = np.zeros(count, dtype=bool)
        bits[kept_at] = True
        as_bits = np.packbits(bits, bitorder="little").tobytes()
        bitmap = len(as_bits) < len(as_list)
        indices = as_bits if bitmap else as_list
    return Packed(count, int(kept.size), bitmap, indices, values, scales)


# ---- inputs ------------------------------------------------------------------------------


def _vectors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    mixed = rng.normal(size=70_001) * rng.choice([1e-6, 1e-3, 1.0, 1e4], size=70_001)
    constant_blocks = np.repeat(rng.normal(size=40), INT8_BLOCK).astype(np.float32)
    constant_blocks[-100:] = 3.0  # and a partial constant tail after it
    signed_zeros = rng.normal(size=3000).astype(np.float32)
    signed_zeros[::3] = -0.0
    signed_zeros[1::3] = 0.0
    # top_k's sample (every 16th entry) far above, or far below, the rest
    sampled_high = rng.normal(size=50_000).astype(np.float32)
    sampled_high[::16] *= 1000
    sampled_low = rng.normal(size=50_000).astype(np.float32)
    sampled_low[::16] = 0.0
    extremes = np.array([3.4e38, -3.4e38, 1e-45, -1e-45, 1.2e-38, 0.0, -0.0, 1.0], np.float32)
    return {
        "normal": rng.normal(0, 1e-3, 100_003).astype(np.float32),
        "mixed": mixed.astype(np.float32),
        "zeros": np.zeros(5000, np.float32),
        "constant": np.full(777, -0.375, np.float32),
        "constant blocks": np.concatenate([constant_blocks, np.full(100, 3.0, np.float32)]),
        "signed zeros": signed_zeros,
        "extremes": np.tile(extremes, 50),
        "one block": rng.normal(size=INT8_BLOCK).astype(np.float32),
        "one more": rng.normal(size=INT8_BLOCK + 1).astype(np.float32),
        "single": np.array([2.5], np.float32),
        "empty": np.zeros(0, np.float32),
        "small ints": rng.integers(-3, 4, 20_000).astype(np.float32),  # ties in |x|
        "sampled high": sampled_high,
        "sampled low": sampled_low,
    }


VECTORS = _vectors()


@pytest.mark.parametrize("name", list(VECTORS))
def test_int8_quantisation_is_bit_for_bit_the_padded_grid_formula(name: str) -> None:
    vector = VECTORS[name]
    with np.errstate(over="ignore", invalid="ignore"):
        codes, scales, decoded, finite = _quantise_int8(vector)
        assert (codes, scales) == _plain_quantise_int8(vector)
        # the sender's decoded values are the receiver's, bit for bit
        received = _dequantise_int8(codes, scales, vector.size)
    assert _same(decoded, received)
    assert finite == bool(np.isfinite(received).all()) or finite is False
    if finite:
        assert np.isfinite(received).all()


@pytest.mark.parametrize("name", [n for n in VECTORS if VECTORS[n].size > 1])
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.5, 0.9])
def test_top_k_picks_the_largest_magnitudes_and_the_lowest_positions_among_ties(
    name: str, fraction: float
) -> None:
    vector = VECTORS[name]
    k = max(1, math.ceil(fraction * vector.size))
    if k >= vector.size:
        return
    at, mask = top_k(vector, k)
    assert at.dtype == np.int64 and at.size == k and (np.diff(at) > 0).all()
    assert mask is not None and np.array_equal(np.flatnonzero(mask), at)
    magnitude = np.abs(vector)
    plain = _plain_top_k(vector, k)
    # the same magnitudes as any top-k set
    assert np.array_equal(np.sort(magnitude[at]), np.sort(magnitude[plain]))
    threshold = np.sort(magnitude)[vector.size - k]
    above = np.flatnonzero(magnitude > threshold)
    tied = np.flatnonzero(magnitude == threshold)
    expected = np.sort(np.concatenate([above, tied[: k - above.size]]))
    assert np.array_equal(at, expected)
    if tied.size == k - above.size:  # no ties to break: the one top-k set
        assert np.array_equal(at, plain)


def test_top_k_without_ties_is_the_index_partition_on_random_vectors() -> None:
    rng = np.random.default_rng(5)
    for size in (2, 3, 257, 10_000, 123_457):
        vector = rng.normal(size=size).astype(np.float32)
        for k in {1, size // 10 or 1, size // 2 or 1, size - 1}:
            at, _ = top_k(vector, k)
            assert np.array_equal(at, _plain_top_k(vector, k))


def test_top_k_of_a_zero_vector_keeps_the_first_positions() -> None:
    at, _ = top_k(np.zeros(1000, np.float32), 10)
    assert np.array_equal(at, np.arange(10))
    at, _ = top_k(np.array([0.0, -0.0, 0.0, -0.0], np.float32), 3)
    assert np.array_equal(at, [0, 1, 2])


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", ["normal", "mixed", "constant blocks", "signed zeros", "zeros"])
def test_the_wire_form_is_the_first_implementations(spec: str, name: str) -> None:
    """Same bytes as before where the top-k set is unique (no ties at the threshold)."""
    vector = VECTORS[name]
    compression = parse_compression(spec)
    if compression.sparsifier == "topk":
        k = max(1, math.ceil(compression.fraction * vector.size))
        magnitude = np.sort(np.abs(vector))
        if k < vector.size and magnitude[vector.size - k] == magnitude[vector.size - k - 1]:
            pytest.skip("ties at the threshold: any top-k set is right")
    got = encode_vector(vector, compression, np.random.default_rng(3))
    plain = _plain_encode(vector, compression, np.random.default_rng(3))
    if compression.lossless is None:
        assert got == plain
    lossy = Compression(compression.sparsifier, compression.fraction, compression.values)
    decoded = decode_vector(got, compression, vector.size)
    assert _same(decoded, decode_vector(plain, lossy, vector.size))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", list(VECTORS))
def test_the_senders_decoded_values_are_the_receivers(spec: str, name: str) -> None:
    vector = VECTORS[name]
    compression = parse_compression(spec)
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            encoded = encode_and_decode(vector, compression, np.random.default_rng(3))
        except MalformedMessage:  # only where the receiver would refuse it too
            lossy = Compression(compression.sparsifier, compression.fraction, compression.values)
            plain = _plain_encode(vector, lossy, np.random.default_rng(3))
            with pytest.raises(MalformedMessage):
                decode_vector(plain, lossy, vector.size)
            return
        dense = decode_vector(encoded.packed, compression, vector.size)
    step = decode_step(encoded.packed, compression, vector.size)
    assert _same(encoded.step.dense(), dense) and _same(step.values, encoded.step.values)
    if encoded.step.at is None:
        assert step.at is None
    else:
        assert step.at is not None and np.array_equal(step.at, encoded.step.at)


@pytest.mark.parametrize("sparse", [False, True])
def test_adding_a_step_in_place_is_the_dense_sum_bit_for_bit(sparse: bool) -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=5000).astype(np.float32)
    reference[::7] = -0.0
    reference[1::7] = 0.0
    at = np.sort(rng.choice(5000, 700, replace=False)) if sparse else None
    values = rng.normal(size=700 if sparse else 5000).astype(np.float32)
    values[::5] = -0.0
    values[1::5] = 0.0
    step = Step(5000, at, values)
    expected = reference + step.dense()
    assert _same(add_step(reference.copy(), step), expected)
    clean = np.where(reference == 0, np.float32(0.0), reference)  # no -0.0 in it
    assert _same(add_step(clean.copy(), step, signed_zeros=False), clean + step.dense())


def test_int8_never_decodes_to_negative_zero() -> None:
    """Why an int8-built reference may skip the ``x + 0.0`` pass (see add_step)."""
    vector = np.array([-0.0, 0.0, -0.0, -1e-45, 1e-45] * 60, np.float32)
    for spec in ("int8", "topk:0.5+int8"):
        for name in [*VECTORS, "these"]:
            v = vector if name == "these" else VECTORS[name]
            with np.errstate(over="ignore", invalid="ignore"):
                try:
                    step = encode_and_decode(
                        v, parse_compression(spec), np.random.default_rng(0)
                    ).step
                except MalformedMessage:
                    continue
            assert not np.signbit(step.values[step.values == 0]).any()
    codes = bytes(range(256))
    scales = np.array([-0.0, 0.0], "<f4").tobytes()
    assert not np.signbit(_dequantise_int8(codes, scales, 256)).any()


@pytest.mark.parametrize("spec", SPECS)
def test_the_senders_reference_is_the_receivers_bit_for_bit(spec: str) -> None:
    """Over a stream of messages (signed zeros and exact zeros included), the sender's
    reference, rebuilt in place from the values it quantised, is the receiver's, and both
    are ``reference + decode_vector(packed)`` as first written."""
    rng = np.random.default_rng(8)
    base = rng.normal(size=(30, 70)).astype(np.float32)
    base[::4, ::3] = -0.0
    params = {"w": base, "b": np.zeros(33, np.float32)}
    spec_ = spec_of(params)
    compression = parse_compression(spec)
    sender = ModelLink(compression, spec_, np.random.default_rng(1))
    receiver = ModelLink(parse_compression("none"), spec_, np.random.default_rng(2))
    plain: np.ndarray | None = None
    for t in range(12):
        w = base + (rng.normal(0, 0.01, base.shape) * (t % 3 != 0)).astype(np.float32)
        w[::5] = -0.0 if t % 2 else w[::5]
        message = ModelMessage(t, {"w": w, "b": params["b"]})
        wire = decode_message(encode(sender.outgoing("r", message)), spec_)
        assert isinstance(wire, CompressedModel) and wire.difference is not None
        plain = wire.difference.copy() if plain is None else plain + wire.difference
        got, answer = receiver.incoming("s", wire)
        assert answer is None and got is not None
        mine = sender.sent[(None, "r")].vector
        theirs = receiver.held["s"].vector
        assert _same(mine, theirs) and _same(mine, plain)


def test_a_receiver_stream_that_changes_codec_keeps_the_dense_sum() -> None:
    """A sender may switch codec within a stream (nothing forbids it on the wire): the
    receiver's in-place reference stays ``reference + difference`` bit for bit."""
    rng = np.random.default_rng(9)
    base = rng.normal(size=(20, 30)).astype(np.float32)
    base[::3, ::2] = -0.0
    spec_ = spec_of({"w": base})
    receiver = ModelLink(parse_compression("none"), spec_, np.random.default_rng(2))
    plain: np.ndarray | None = None
    specs = ["zlib", "topk:0.2+int8", "topk:0.3", "int8", "topk:0.1+int8", "float16"]
    senders = {s: ModelLink(parse_compression(s), spec_, np.random.default_rng(1)) for s in specs}
    stream = None
    for t, spec in enumerate(specs * 2):
        w = base + (rng.normal(0, 0.01, base.shape)).astype(np.float32)
        w[::4] = -0.0
        wire = senders[spec].outgoing("r", ModelMessage(t, {"w": w}))
        assert isinstance(wire, CompressedModel)
        if stream is None:
            stream = (wire.stream, wire.seq)
        # relabel onto one stream, as a sender that switched codec would send it
        wire = CompressedModel(wire.inner, wire.codec, stream[0], t, wire.packed)
        decoded = decode_message(encode(wire), spec_)
        assert isinstance(decoded, CompressedModel) and decoded.difference is not None
        if t == 0:
            plain = decoded.difference.copy()
        elif decoded.seq == 0:
            continue
        else:
            assert plain is not None
            plain = plain + decoded.difference
        got, answer = receiver.incoming("s", decoded)
        assert answer is None and got is not None
        assert _same(receiver.held["s"].vector, plain)
