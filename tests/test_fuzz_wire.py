"""A long fuzz run of the wire decoder over every message type: arbitrary bytes, valid
encodings with bytes flipped and cut, and valid maps with fields swapped for arbitrary
values only ever give our own WireError subclasses, never a crash (12,000 cases in all).
A longer coverage-guided run: ``python tests/fuzz/atheris_wire.py`` (needs atheris)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.errors import WireError
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.messages import ModelMessage, spec_of
from gossiplearn.protocols.modest_messages import (
    Activity,
    Membership,
    MembershipAdvert,
    ModelKind,
    ModestModel,
    Ping,
    Pong,
)
from gossiplearn.protocols.signing import SeedKeys, history_statement, params_digest
from gossiplearn.protocols.sybilwall_messages import HistoryRecord

PARAMS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 1, 3, 4),
    "bn.running_mean": np.zeros(2, np.float32),
    "bn.num_batches_tracked": np.array(3, np.int64),
}
SPEC = spec_of(PARAMS)
KEYS = SeedKeys(0)
SIGNATURE = KEYS.signer(1).sign(history_statement(1, 2, params_digest(PARAMS)))
SIGNED_VIEW = {
    1: Activity(4),
    "b": Activity(2, 3, Membership.LEAVE, SIGNATURE),
    7: Activity(1, 1, Membership.JOIN, SIGNATURE),
}
#: Every registered message type, signed where it can be.
VALID = [
    encode(ModelMessage(3, PARAMS, 10)),
    encode(Ping(4, 7)),
    encode(Pong(4, 7)),
    encode(ModestModel(ModelKind.TRAINED, 5, PARAMS, 9, {1: Activity(4), "b": Activity(2)})),
    encode(ModestModel(ModelKind.AGGREGATED, 5, PARAMS, 0, SIGNED_VIEW)),
    encode(MembershipAdvert(6, 1, Membership.JOIN)),
    encode(MembershipAdvert(6, 2, Membership.LEAVE, SIGNATURE)),
    encode(HistoryRecord(2, "peer-x", 3, PARAMS)),
    encode(HistoryRecord(2, 1, 0, PARAMS, SIGNATURE)),
]
#: Arbitrary msgpack values to put in a valid message's fields.
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)
LIMIT = 1 << 20

pytestmark = pytest.mark.slow


def _decode(data: bytes) -> None:
    with contextlib.suppress(WireError):  # anything else fails the test
        decode_message(data, SPEC, max_bytes=LIMIT)


@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode(data)


@settings(max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 64),
)
def test_mutated_valid_messages(original: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(original)
    for position, value in flips:
        data[position % len(data)] = value
    _decode(bytes(data[: len(data) - cut]))


@settings(max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(VALID), st.data())
def test_valid_maps_with_arbitrary_fields(original: bytes, data: st.DataObject) -> None:
    fields: dict[str, Any] = msgpack.unpackb(original, raw=False)
    for key in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
        fields[key] = data.draw(VALUES)
    if data.draw(st.booleans()):
        fields[data.draw(st.text(max_size=6))] = data.draw(VALUES)
    _decode(msgpack.packb(fields, use_bin_type=True))


def test_every_valid_message_decodes() -> None:
    for data in VALID:
        decode_message(data, SPEC, max_bytes=LIMIT)


def test_the_fuzz_corpus_covers_every_registered_message_type() -> None:
    from gossiplearn.protocols import codec
    from gossiplearn.protocols.messages import MESSAGE_TYPES

    covered = {msgpack.unpackb(data, raw=False)["type"] for data in VALID}
    assert covered == set(MESSAGE_TYPES) | set(codec._WIRE_TYPES)  # white-box: the registry
