"""Compression codecs, error feedback and the shared-reference protocol (synthetic tensors)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from gossiplearn.errors import MalformedMessage, WireError
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.compressed_messages import CompressedModel, ReferenceMissing
from gossiplearn.protocols.compression import (
    INT8_BLOCK,
    Packed,
    SpecError,
    decode_vector,
    encode_vector,
    parse_compression,
)
from gossiplearn.protocols.feedback import ModelLink
from gossiplearn.protocols.messages import Message, ModelMessage, spec_of

RNG = np.random.default_rng(0)
VECTOR = (RNG.normal(size=5000) * RNG.choice([1e-3, 1.0, 30.0], size=5000)).astype(np.float32)
PARAMS = {
    "w": RNG.normal(size=(40, 50)).astype(np.float32),
    "b": RNG.normal(size=50).astype(np.float32),
    "steps": np.array(7, np.int64),
}
SPEC = spec_of(PARAMS)


def _roundtrip(spec: str, vector: np.ndarray = VECTOR, sparse: bool = True) -> np.ndarray:
    compression = parse_compression(spec)
    packed = encode_vector(vector, compression, np.random.default_rng(1), sparse=sparse)
    return decode_vector(packed, compression, vector.size)


# ---- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("none", "none"),
        ("INT8", "int8"),
        ("topk:0.10+int8", "topk:0.1+int8"),
        ("random:1+bfloat16+zlib", "random:1+bfloat16+zlib"),
        ("zlib", "zlib"),
        ("float16+zlib", "float16+zlib"),
    ],
)
def test_specs_parse_to_a_canonical_form(spec: str, canonical: str) -> None:
    assert str(parse_compression(spec)) == canonical


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("gzip", "unknown stage 'gzip'"),
        ("topk:0", "must be in (0, 1]"),
        ("random:1.01", "must be in (0, 1]"),
        ("topk:-0.5", "must be in (0, 1]"),
        ("topk:nan", "must be in (0, 1]"),
        ("topk", "needs a fraction"),
        ("int8+topk:0.1", "cannot come after 'int8'"),
        ("zlib+float16", "cannot come after 'zlib'"),
        ("int8+float16", "do the same job"),
        ("topk:0.1+random:0.2", "do the same job"),
        ("int8:3", "takes no argument"),
        ("none+int8", "unknown stage 'none'"),
    ],
)
def test_bad_specs_say_what_is_allowed(spec: str, says: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_compression(spec)
    assert says in str(error.value) and repr(spec) in str(error.value)


# ---- each codec within its stated bound ------------------------------------------------


def test_float32_and_zlib_are_exact() -> None:
    assert np.array_equal(_roundtrip("zlib"), VECTOR)
    assert np.array_equal(_roundtrip("random:1"), VECTOR)


def test_float16_within_its_relative_bound() -> None:
    got = _roundtrip("float16")
    bound = np.maximum(2.0**-11 * np.abs(VECTOR), 2.0**-25)
    assert (np.abs(got - VECTOR) <= bound).all()
    assert not np.array_equal(got, VECTOR)  # it did round


def test_float16_clips_instead_of_overflowing() -> None:
    got = _roundtrip("float16", np.array([1e6, -1e6, 1.0], np.float32))
    assert np.isfinite(got).all() and got[0] == 65504 and got[1] == -65504


def test_bfloat16_within_its_relative_bound_and_range() -> None:
    got = _roundtrip("bfloat16")
    assert (np.abs(got - VECTOR) <= 2.0**-8 * np.abs(VECTOR)).all()
    huge = np.array([3.4e38, -3.4e38], np.float32)
    assert np.isfinite(_roundtrip("bfloat16", huge)).all()


def test_int8_within_half_a_step_of_each_block() -> None:
    got = _roundtrip("int8")
    for start in range(0, VECTOR.size, INT8_BLOCK):
        block = VECTOR[start : start + INT8_BLOCK].astype(np.float64)
        step = (block.max() - block.min()) / 255
        error = np.abs(got[start : start + INT8_BLOCK] - block)
        assert error.max() <= step / 2 * (1 + 1e-5) + 1e-6


def test_int8_is_exact_on_a_constant_block() -> None:
    constant = np.full(300, 0.25, np.float32)
    assert np.array_equal(_roundtrip("int8", constant), constant)


@pytest.mark.parametrize("spec", ["topk:0.1", "topk:0.1+int8+zlib", "random:0.02+float16"])
def test_sparsifiers_send_their_share_and_zero_the_rest(spec: str) -> None:
    compression = parse_compression(spec)
    packed = encode_vector(VECTOR, compression, np.random.default_rng(1))
    assert packed.kept == int(np.ceil(compression.fraction * VECTOR.size))
    got = decode_vector(packed, compression, VECTOR.size)
    sent = got != 0
    assert sent.sum() <= packed.kept
    if compression.values is None:
        assert np.array_equal(got[sent], VECTOR[sent])  # kept entries travel exactly
    if compression.sparsifier == "topk":  # the largest magnitudes are the ones kept
        threshold = np.sort(np.abs(VECTOR))[-packed.kept]
        assert (np.abs(VECTOR[np.abs(VECTOR) > threshold * 1.01]) > 0).all()
        assert (got[np.abs(VECTOR) < threshold * 0.99] == 0).all()


def test_a_full_model_is_never_sparsified() -> None:
    assert np.array_equal(_roundtrip("topk:0.01", sparse=False), VECTOR)


def test_indices_travel_as_a_bitmap_when_smaller() -> None:
    dense = encode_vector(VECTOR, parse_compression("topk:0.5"), RNG)
    sparse = encode_vector(VECTOR, parse_compression("topk:0.01"), RNG)
    assert dense.bitmap and len(dense.indices) == VECTOR.size // 8
    assert not sparse.bitmap and len(sparse.indices) == 4 * sparse.kept


# ---- the strict decoder ----------------------------------------------------------------


def _tampered(packed: Packed, **change: object) -> Packed:
    fields = {**packed.__dict__, **change}
    return Packed(**fields)  # type: ignore[arg-type]


def test_decoder_refuses_inconsistent_vectors() -> None:
    c = parse_compression("topk:0.01")
    packed = encode_vector(VECTOR, c, RNG)
    at = np.frombuffer(packed.indices, "<u4").copy()
    bad = {
        "count": _tampered(packed, count=VECTOR.size + 1),
        "kept": _tampered(packed, kept=packed.kept + 1),
        "unsorted": _tampered(packed, indices=at[::-1].tobytes()),
        "repeated": _tampered(packed, indices=np.r_[at[:-1], at[-2]].astype("<u4").tobytes()),
        "range": _tampered(packed, indices=np.r_[at[:-1], VECTOR.size].astype("<u4").tobytes()),
        "short": _tampered(packed, values=packed.values[:-4]),
        "nan": _tampered(packed, values=np.full(packed.kept, np.nan, "<f4").tobytes()),
    }
    for what, tampered in bad.items():
        with pytest.raises(MalformedMessage):
            decode_vector(tampered, c, VECTOR.size)
            pytest.fail(what)


def test_decoder_refuses_bad_bitmaps_scales_and_zlib_bombs() -> None:
    c = parse_compression("topk:0.5+int8+zlib")
    packed = encode_vector(np.arange(20, dtype=np.float32), c, RNG)
    import zlib

    bits = np.zeros(3, np.uint8)
    bits[:2] = 0xFF
    bits[2] = 0xFF  # 24 bits for 20 entries: bits past the end
    with pytest.raises(MalformedMessage, match="past the end"):
        decode_vector(_tampered(packed, indices=zlib.compress(bits.tobytes())), c, 20)
    for step in (-1.0, -0.0):  # -0.0 would decode -0.0 entries, which add_step rules out
        with pytest.raises(MalformedMessage, match="scales"):
            scales = np.array([0.0, step], "<f4").tobytes()
            decode_vector(_tampered(packed, scales=zlib.compress(scales)), c, 20)
    bomb = zlib.compress(bytes(10**7))
    with pytest.raises(MalformedMessage, match="inflate to more"):
        decode_vector(_tampered(packed, values=bomb), c, 20)


def test_the_wire_message_refuses_a_sparse_full_model_and_uncarried_types() -> None:
    link = ModelLink(parse_compression("topk:0.1"), SPEC, np.random.default_rng(0))
    link.outgoing("r", ModelMessage(1, PARAMS))
    delta = link.outgoing("r", ModelMessage(2, PARAMS))
    fields = msgpack.unpackb(encode(delta), raw=False)
    with pytest.raises(MalformedMessage, match="must not be sparse"):
        decode_message(msgpack.packb({**fields, "seq": 0}, use_bin_type=True), SPEC)
    inner = msgpack.packb({"type": 40, "tensors": []}, use_bin_type=True)
    with pytest.raises(MalformedMessage, match="cannot carry type id 40"):
        decode_message(msgpack.packb({**fields, "inner": inner}, use_bin_type=True), SPEC)
    with pytest.raises(MalformedMessage, match="stream"):
        decode_message(msgpack.packb({**fields, "stream": 0}, use_bin_type=True), SPEC)


# ---- error feedback and shared references ----------------------------------------------


def _send(
    sender: ModelLink, receiver: ModelLink, message: Message
) -> tuple[Message | None, Message | None]:
    """One message over the wire, sender 's' to receiver 'r'; any answer goes back."""
    wire = decode_message(encode(sender.outgoing("r", message)), SPEC)
    got, answer = receiver.incoming("s", wire)
    if answer is not None:
        sender.incoming("r", decode_message(encode(answer), SPEC))
    return got, answer


def _pair(spec: str) -> tuple[ModelLink, ModelLink]:
    compression = parse_compression(spec)
    return (
        ModelLink(compression, SPEC, np.random.default_rng(1)),
        ModelLink(compression, SPEC, np.random.default_rng(2)),
    )


def _model(t: int, drift: np.random.Generator) -> ModelMessage:
    w = PARAMS["w"] + 0.1 * drift.normal(size=(40, 50)).astype(np.float32)
    b = PARAMS["b"] + 0.1 * drift.normal(size=50).astype(np.float32)
    return ModelMessage(t, {"w": w, "b": b, "steps": PARAMS["steps"]}, samples=3)


@pytest.mark.parametrize(
    ("spec", "bound"), [("topk:0.05+int8", 0.02), ("random:0.1+float16", 0.02), ("int8", 1e-3)]
)
def test_error_feedback_makes_the_received_average_the_sent_one(spec: str, bound: float) -> None:
    """Models fluctuate around a mean: the long-run average of what the receiver rebuilds
    is the average of what was sent. Without the shared reference (each model compressed
    on its own) a sparsifier loses most of every model, and the averages stay far apart."""
    sender, receiver = _pair(spec)
    drift = np.random.default_rng(3)
    sent, received, alone = np.zeros((40, 50)), np.zeros((40, 50)), np.zeros((40, 50))
    compression = parse_compression(spec)
    steps = 2000
    for t in range(steps):
        message = _model(t, drift)
        got, answer = _send(sender, receiver, message)
        assert answer is None and isinstance(got, ModelMessage)
        assert got.round == t and got.samples == 3 and got.params["steps"] == 7
        sent += message.params["w"]
        received += got.params["w"]
        packed = encode_vector(message.params["w"].reshape(-1), compression, RNG)
        alone += decode_vector(packed, compression, 2000).reshape(40, 50)
    gap = np.abs(received - sent) / steps
    assert gap.mean() < bound and gap.max() < 5 * bound  # the per-model noise is 0.1
    assert sender.fulls == 1 and receiver.missing == 0
    if compression.sparsifier is not None:
        assert (np.abs(alone - sent) / steps).mean() > 0.5
    # a constant model arrives exactly (up to quantisation) once the residual is sent
    for t in range(steps, steps + 200):
        got, _ = _send(sender, receiver, ModelMessage(t, PARAMS))
    assert isinstance(got, ModelMessage)
    assert np.abs(got.params["w"] - PARAMS["w"]).max() < 0.02


def test_sparsified_messages_after_the_first_are_small() -> None:
    sender, _ = _pair("topk:0.01+int8")
    first = len(encode(sender.outgoing("r", ModelMessage(0, PARAMS))))
    later = len(encode(sender.outgoing("r", _model(1, np.random.default_rng(0)))))
    plain = len(encode(ModelMessage(0, PARAMS)))
    assert first < plain / 3.5  # full, int8
    assert later < plain / 25  # 1% of the entries, int8 + indices, and the header


def test_a_receiver_without_the_reference_asks_for_and_gets_a_full_model() -> None:
    sender, receiver = _pair("topk:0.1+int8")
    drift = np.random.default_rng(4)
    for t in range(5):
        _send(sender, receiver, _model(t, drift))
    restarted = ModelLink(parse_compression("topk:0.1+int8"), SPEC, np.random.default_rng(9))
    got, answer = _send(sender, restarted, _model(5, drift))
    assert got is None and isinstance(answer, ReferenceMissing)  # dropped, never wrong
    assert restarted.missing == 1
    message = _model(6, drift)
    got, answer = _send(sender, restarted, message)  # the sender started a new stream
    assert answer is None and isinstance(got, ModelMessage)
    step = (PARAMS["w"].max() - PARAMS["w"].min() + 1) / 255
    assert np.abs(got.params["w"] - message.params["w"]).max() <= step  # whole, int8 only


def test_a_lost_message_costs_one_drop_then_a_full_model() -> None:
    sender, receiver = _pair("topk:0.1")
    drift = np.random.default_rng(5)
    _send(sender, receiver, _model(0, drift))
    sender.outgoing("r", _model(1, drift))  # lost on the way
    got, answer = _send(sender, receiver, _model(2, drift))
    assert got is None and isinstance(answer, ReferenceMissing)
    message = _model(3, drift)
    got, answer = _send(sender, receiver, message)
    assert answer is None and isinstance(got, ModelMessage)
    assert np.array_equal(got.params["w"], message.params["w"])  # float32: exact


def test_a_stale_nack_does_not_restart_a_new_stream() -> None:
    sender, _ = _pair("topk:0.1")
    drift = np.random.default_rng(6)
    first = sender.outgoing("r", _model(0, drift))
    assert isinstance(first, CompressedModel)
    sender.incoming("r", ReferenceMissing(first.stream))
    second = sender.outgoing("r", _model(1, drift))
    assert isinstance(second, CompressedModel) and second.seq == 0
    sender.incoming("r", ReferenceMissing(first.stream))  # about the old stream: ignored
    third = sender.outgoing("r", _model(2, drift))
    assert isinstance(third, CompressedModel) and third.seq == 1
    assert third.stream == second.stream


def test_a_nack_from_another_peer_does_not_touch_this_pair() -> None:
    sender, _ = _pair("int8")
    first = sender.outgoing("r", ModelMessage(0, PARAMS))
    assert isinstance(first, CompressedModel)
    sender.incoming("mallory", ReferenceMissing(first.stream))
    again = sender.outgoing("r", ModelMessage(1, PARAMS))
    assert isinstance(again, CompressedModel) and again.seq == 1


def test_references_are_bounded_per_link() -> None:
    compression = parse_compression("int8")
    receiver = ModelLink(compression, SPEC, np.random.default_rng(0), max_peers=3)
    for name in "abcde":
        sender = ModelLink(compression, SPEC, np.random.default_rng(ord(name)))
        wire = decode_message(encode(sender.outgoing("r", ModelMessage(0, PARAMS))), SPEC)
        receiver.incoming(name, wire)
    assert list(receiver.held) == ["c", "d", "e"]
    by_bytes = ModelLink(compression, SPEC, np.random.default_rng(0), max_bytes=2 * 4 * 2050)
    assert by_bytes.max_peers == 2  # two references of 2,050 float32 entries


def test_none_sends_messages_unchanged() -> None:
    link = ModelLink(parse_compression("none"), SPEC, np.random.default_rng(0))
    message = ModelMessage(0, PARAMS)
    assert link.outgoing("r", message) is message


def test_a_rebuilt_model_is_checked_by_its_own_decoder() -> None:
    """A non-finite sum, or an inner message that does not fit the model, is refused."""
    sender, receiver = _pair("float16")
    wire = sender.outgoing("r", ModelMessage(0, PARAMS))
    assert isinstance(wire, CompressedModel)
    fields = msgpack.unpackb(encode(wire), raw=False)
    inner = msgpack.unpackb(fields["inner"], raw=False)
    inner["tensors"] = []  # the int64 tensor is missing
    fields["inner"] = msgpack.packb(inner, use_bin_type=True)
    decoded = decode_message(msgpack.packb(fields, use_bin_type=True), SPEC)
    with pytest.raises(WireError):
        receiver.incoming("s", decoded)


@pytest.mark.parametrize("kept", [0, 1, 255, 256, 257, 100_003])
def test_int8_decodes_exactly_as_minimum_plus_code_times_step(kept: int) -> None:
    from gossiplearn.protocols.compression import INT8_BLOCK, _dequantise_int8

    rng = np.random.default_rng(kept)
    codes = rng.integers(0, 256, kept, dtype=np.uint8)
    blocks = -(-kept // INT8_BLOCK)
    pairs = np.stack([rng.normal(0, 1, blocks), rng.uniform(0, 0.01, blocks)], axis=1).astype("<f4")
    block = np.arange(kept) // INT8_BLOCK
    expected = pairs[block, 0] + codes.astype(np.float32) * pairs[block, 1]
    got = _dequantise_int8(codes.tobytes(), pairs.tobytes(), kept)
    assert got.dtype == np.float32 and got.shape == (kept,)
    assert np.array_equal(got.view(np.uint32), expected.astype(np.float32).view(np.uint32))


def test_bfloat16_rounds_every_bit_pattern_as_the_uint64_formula() -> None:
    from gossiplearn.protocols.compression import _to_bfloat16

    rng = np.random.default_rng(3)
    edges = np.array(
        [0, 0x7FFF, 0x8000, 0x18000, 0x7F7FFFFF, 0x7F800000, 0xFF7FFFFF, 0xFFFFFFFF,
         0x7FFF8000, 0xFFFF8000, 0x80000000, 0x3F808000],
        dtype=np.uint32,
    )  # fmt: skip
    bits = np.concatenate([edges, rng.integers(0, 2**32, 200_000, dtype=np.uint32)])
    wide = bits.astype(np.uint64)
    expected = ((wide + 0x7FFF + ((wide >> 16) & 1)) >> 16).astype(np.uint16)
    expected[(expected & 0x7FFF) == 0x7F80] -= 1
    with np.errstate(invalid="ignore"):
        got = _to_bfloat16(bits.view(np.float32))
    assert np.array_equal(got, expected.astype("<u2"))
