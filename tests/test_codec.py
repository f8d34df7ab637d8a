"""Tests for the msgpack wire codec: round trips and rejection of every kind of bad input."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.errors import (
    MalformedMessage,
    MessageTooLarge,
    ModelMismatch,
    NonFiniteModel,
    WireError,
)
from gossiplearn.protocols.codec import DEFAULT_MAX_MESSAGE_BYTES, decode, encode
from gossiplearn.protocols.messages import ModelMessage, ModelSpec, spec_of
from gossiplearn.types import Params


def _params() -> Params:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(4).astype(np.float32),
        "bn.running_mean": rng.standard_normal(4).astype(np.float64),
        "bn.num_batches_tracked": np.array(17, dtype=np.int64),
        "fc.weight": rng.standard_normal((2, 36)).astype(np.float16),
        "mask": np.array([True, False, True]),
        "ids": np.arange(5, dtype=np.uint8),
    }


def _message(params: Params | None = None, round_: int = 3, samples: int = 600) -> ModelMessage:
    return ModelMessage(
        round=round_, params=_params() if params is None else params, samples=samples
    )


def _repack(data: bytes, **changes: Any) -> bytes:
    """Unpack a valid encoding, change top-level fields, pack again."""
    obj = msgpack.unpackb(data, raw=False)
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


def _tensors(data: bytes) -> list[list[Any]]:
    tensors: list[list[Any]] = msgpack.unpackb(data, raw=False)["tensors"]
    return tensors


SPEC = spec_of(_params())
VALID = encode(_message())


# ---- round trips ---------------------------------------------------------------------


def test_round_trip_preserves_everything() -> None:
    params = _params()
    decoded = decode(encode(_message(params)), spec_of(params))
    assert decoded.round == 3
    assert decoded.samples == 600
    assert list(decoded.params) == list(params)
    for name, array in params.items():
        got = decoded.params[name]
        assert got.dtype == array.dtype
        assert got.shape == array.shape
        np.testing.assert_array_equal(got, array)


def test_scalar_buffer_keeps_shape_and_dtype() -> None:
    decoded = decode(VALID, SPEC)
    counter = decoded.params["bn.num_batches_tracked"]
    assert counter.shape == ()
    assert counter.dtype == np.int64
    assert int(counter) == 17


def test_decoded_arrays_are_read_only() -> None:
    decoded = decode(VALID, SPEC)
    with pytest.raises(ValueError):
        decoded.params["conv.bias"][0] = 1.0


def test_big_endian_arrays_are_sent_little_endian() -> None:
    big = {"w": np.arange(6, dtype=">f4").reshape(2, 3), "n": np.array(5, dtype=">i8")}
    spec = spec_of(big)
    assert spec == {"w": ("<f4", (2, 3)), "n": ("<i8", ())}
    assert _tensors(encode(ModelMessage(0, big)))[0][1] == "<f4"
    decoded = decode(encode(ModelMessage(0, big)), spec)
    np.testing.assert_array_equal(decoded.params["w"], big["w"])
    assert int(decoded.params["n"]) == 5


def test_non_contiguous_array_round_trips() -> None:
    params: Params = {"t": np.arange(12, dtype=np.float32).reshape(3, 4).T}
    decoded = decode(encode(ModelMessage(1, params)), spec_of(params))
    np.testing.assert_array_equal(decoded.params["t"], params["t"])


def test_params_follow_spec_order_not_wire_order() -> None:
    params = _params()
    reversed_spec: ModelSpec = dict(reversed(list(spec_of(params).items())))
    decoded = decode(encode(_message(params)), reversed_spec)
    assert list(decoded.params) == list(reversed_spec)


def test_empty_tensor_round_trips() -> None:
    params: Params = {"empty": np.zeros((0, 3), dtype=np.float32)}
    decoded = decode(encode(ModelMessage(0, params)), spec_of(params))
    assert decoded.params["empty"].shape == (0, 3)


def test_encoding_never_pickles() -> None:
    assert b"numpy" not in VALID and b"\x80\x04" not in VALID[:2]
    assert msgpack.unpackb(VALID, raw=False)["type"] == ModelMessage.TYPE_ID


def test_unsupported_dtype_is_refused_at_the_sender() -> None:
    with pytest.raises(ValueError, match="complex"):
        encode(ModelMessage(0, {"z": np.zeros(2, dtype=np.complex64)}))
    with pytest.raises(ValueError, match="cannot be sent"):
        spec_of({"o": np.array([object()])})


def test_negative_round_is_refused_at_the_sender() -> None:
    with pytest.raises(ValueError, match="round"):
        ModelMessage(round=-1, params={})


# ---- size ----------------------------------------------------------------------------


def test_oversized_message_rejected_before_parsing() -> None:
    with pytest.raises(MessageTooLarge) as info:
        decode(b"\x00" * 101, SPEC, max_bytes=100)
    assert "101" in str(info.value) and "100" in str(info.value)


def test_default_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == 64 * 1024 * 1024
    decode(VALID, SPEC, max_bytes=len(VALID))  # exactly at the limit is fine


# ---- model mismatches ----------------------------------------------------------------


def test_wrong_shape_is_model_mismatch_naming_the_tensor() -> None:
    params = _params()
    params["fc.weight"] = np.zeros((3, 36), dtype=np.float16)
    with pytest.raises(ModelMismatch) as info:
        decode(encode(_message(params)), SPEC)
    text = str(info.value)
    assert "fc.weight" in text and "(2, 36)" in text and "(3, 36)" in text


def test_missing_tensor_is_model_mismatch() -> None:
    params = _params()
    del params["conv.bias"]
    with pytest.raises(ModelMismatch, match=r"missing tensors \['conv.bias'\]"):
        decode(encode(_message(params)), SPEC)


def test_another_architecture_names_its_first_tensor_of_another_shape() -> None:
    # fewer tensors and one reshaped: the shape is said first, as a spec check says it
    params = _params()
    del params["conv.bias"]
    params["fc.weight"] = np.zeros((3, 36), dtype=np.float16)
    with pytest.raises(ModelMismatch) as info:
        decode(encode(_message(params)), SPEC)
    text = str(info.value)
    assert "tensor 'fc.weight' is [3, 36] there, [2, 36] here; missing tensors" in text


def test_extra_tensor_is_model_mismatch() -> None:
    params = _params()
    params["head.weight"] = np.zeros(2, dtype=np.float32)
    with pytest.raises(ModelMismatch, match=r"unexpected tensors \['head.weight'\]"):
        decode(encode(_message(params)), SPEC)


def test_wrong_dtype_is_model_mismatch() -> None:
    params = _params()
    params["conv.bias"] = params["conv.bias"].astype(np.float64)
    with pytest.raises(ModelMismatch) as info:
        decode(encode(_message(params)), SPEC)
    text = str(info.value)
    assert "conv.bias" in text and "<f4" in text and "<f8" in text


def test_many_unexpected_names_are_summarised() -> None:
    params: Params = {f"extra{i}": np.zeros(1, dtype=np.float32) for i in range(50)}
    with pytest.raises(ModelMismatch, match="and 45 more"):
        decode(encode(ModelMessage(0, params)), SPEC)


# ---- non-finite values ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["conv.weight", "bn.running_mean", "fc.weight"])
def test_non_finite_values_rejected(bad: float, name: str) -> None:
    params = _params()
    params[name] = params[name].copy()
    params[name].flat[1] = bad
    with pytest.raises(NonFiniteModel, match=name):
        decode(encode(_message(params)), SPEC)


# ---- malformed input -----------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 10, len(VALID) // 2, len(VALID) - 1])
def test_truncated_bytes_are_malformed(cut: int) -> None:
    with pytest.raises(MalformedMessage):
        decode(VALID[:cut], SPEC)


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # the one byte msgpack never uses
        b"hello world",
        VALID + b"\x00",  # trailing data
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: 2}),  # non-str map key
        msgpack.packb({"type": 1}),
        msgpack.packb(None),
    ],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(data, SPEC)


def test_unknown_type_id_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="unknown message type id 99"):
        decode(_repack(VALID, type=99), SPEC)


def test_unsupported_version_is_malformed() -> None:
    with pytest.raises(MalformedMessage, match="version 2"):
        decode(_repack(VALID, version=2), SPEC)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"round": -1}, "round must be >= 0"),
        ({"samples": -5}, "samples must be >= 0"),
        ({"round": "3"}, "round must be an int"),
        ({"round": True}, "round must be an int"),
        ({"round": 1.5}, "round must be an int"),
        ({"tensors": {}}, "'tensors' must be a list"),
        ({"extra": 1}, "keys"),
    ],
)
def test_bad_header_fields_are_malformed(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(_repack(VALID, **changes), SPEC)


def _with_tensor(index: int, entry: Any) -> bytes:
    tensors = _tensors(VALID)
    tensors[index] = entry
    return _repack(VALID, tensors=tensors)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("conv.bias", "not a \\[name, dtype, shape, raw\\] list"),
        (["conv.bias", "<f4", [4]], "not a \\[name, dtype, shape, raw\\] list"),
        ([7, "<f4", [4], b"\x00" * 16], "name must be a str"),
        (["conv.bias", 4, [4], b"\x00" * 16], "dtype must be a str"),
        (["conv.bias", "<f4", 4, b"\x00" * 16], "shape"),
        (["conv.bias", "<f4", [-4], b"\x00" * 16], "shape"),
        (["conv.bias", "<f4", [4], "text"], "data must be msgpack bin"),
        (["conv.bias", "<f4", [4], b"\x00" * 15], "15 data bytes, expected 16"),
        (["conv.bias", "|O", [4], b"\x00" * 32], "unsupported dtype"),
        (["conv.weight", "<f4", [4], b"\x00" * 16], "appears twice"),
    ],
)
def test_bad_tensor_entries_are_malformed(entry: Any, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode(_with_tensor(1, entry), SPEC)


def test_invalid_bool_bytes_are_malformed() -> None:
    with pytest.raises(MalformedMessage, match="bool"):
        decode(_with_tensor(5, ["mask", "|b1", [3], b"\x01\x02\x00"]), SPEC)


def test_nested_array_headers_cannot_allocate_much() -> None:
    # Each 3-byte header announces 65535 elements; msgpack must refuse before allocating.
    with pytest.raises(MalformedMessage):
        decode(b"\xdc\xff\xff" * 1000, SPEC)


# ---- fuzzing -------------------------------------------------------------------------


def _decode_or_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data, SPEC, max_bytes=len(VALID) + 64)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_raise_wire_errors(data: bytes) -> None:
    _decode_or_wire_error(data)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(_mutated())
def test_mutated_encodings_only_raise_wire_errors(data: bytes) -> None:
    _decode_or_wire_error(data)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=32)
    | st.sampled_from(["<f4", "<i8", "|b1", "conv.bias", "tensors", "type", 1]),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["type", "version", "round", "samples", "tensors"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


_tensor_entry = st.lists(_msgpack_values, max_size=5) | st.tuples(
    st.sampled_from([*SPEC, "other"]),
    st.sampled_from(["<f4", "<f8", "<f2", "<i8", "|b1", "|u1", ">f4", "|O", "<c8"]),
    st.lists(st.integers(-1, 40), max_size=4),
    st.binary(max_size=64),
).map(list)


@settings(max_examples=500, deadline=None)
@given(_msgpack_values)
def test_arbitrary_msgpack_structures_only_raise_wire_errors(value: Any) -> None:
    _decode_or_wire_error(msgpack.packb(value, use_bin_type=True))


@settings(max_examples=500, deadline=None)
@given(st.lists(_tensor_entry, max_size=len(SPEC) + 1), st.integers(-2, 2**64 - 1))
def test_valid_header_with_arbitrary_tensors_only_raises_wire_errors(
    tensors: list[Any], round_: int
) -> None:
    header = {"type": 1, "version": 1, "round": round_, "samples": 0, "tensors": tensors}
    _decode_or_wire_error(msgpack.packb(header, use_bin_type=True))
