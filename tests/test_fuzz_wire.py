"""A long fuzz run of the wire decoder over every message type: arbitrary bytes, valid
encodings with bytes flipped and cut, and valid maps with fields swapped for arbitrary
values only ever give our own WireError subclasses, never a crash (12,000 cases in all).
Compressed models (every codec, full and difference, each carried type) are among the
valid encodings, and a decoded one is rebuilt against a reference as a receiver would.
A longer coverage-guided run: ``python tests/fuzz/atheris_wire.py`` (needs atheris).

The frame reader under the transport's limits is fuzzed too, by a seeded random loop:
streams of valid, corrupt, truncated and huge-announcing frames, cut into random chunks
and interleaved across readers that share one byte budget. Only FrameError subclasses
may come out, every valid frame before the first bad one arrives intact, no reader ever
holds more than the budget, and every byte goes back to it. The count is
``GOSSIPLEARN_FUZZ_FRAMES`` (default 2,000); a long run::

    GOSSIPLEARN_FUZZ_FRAMES=100000 pytest tests/test_fuzz_wire.py -k frame_reader
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.errors import WireError
from gossiplearn.protocols.bristle_messages import StampedHead
from gossiplearn.protocols.codec import decode_message, encode
from gossiplearn.protocols.compressed_messages import CompressedModel, ReferenceMissing
from gossiplearn.protocols.compression import parse_compression
from gossiplearn.protocols.feedback import ModelLink, _Reference
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
from gossiplearn.transport.framing import (
    HEADER_SIZE,
    FrameError,
    FrameReader,
    FrameRefused,
    digest,
    encode_frame,
    pack_header,
)
from gossiplearn.transport.limits import ByteBudget

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
    encode(StampedHead(4, PARAMS, 12, "0123456789abcdef")),
    encode(ReferenceMissing(12345)),
]


def _compressed_encodings() -> list[bytes]:
    """A full model and two differences (a list of indices, then a bitmap) in every
    codec, carrying each model-carrying type."""
    carried = [
        ModelMessage(3, PARAMS, 10),
        ModestModel(ModelKind.TRAINED, 5, PARAMS, 9, {1: Activity(4)}),
        StampedHead(4, PARAMS, 12, "0123456789abcdef"),
    ]
    moved = {k: v + 1 if v.dtype.kind == "f" else v for k, v in PARAMS.items()}
    out = []
    for index, spec in enumerate(
        ["float16", "bfloat16", "int8", "topk:0.05+int8+zlib", "random:0.5+float16", "zlib"]
    ):
        link = ModelLink(parse_compression(spec), SPEC, np.random.default_rng(index))
        message = carried[index % len(carried)]
        out.append(encode(link.outgoing("r", message)))
        out.append(encode(link.outgoing("r", message)))
        moved_message = ModelMessage(4, moved, 10)
        out.append(encode(link.outgoing("r", moved_message)))
    return out


VALID += _compressed_encodings()
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
        message = decode_message(data, SPEC, max_bytes=LIMIT)
        if isinstance(message, CompressedModel):  # and rebuild what it carries
            link = ModelLink(parse_compression("int8"), SPEC, np.random.default_rng(0))
            link.held["s"] = _Reference(message.stream, message.seq - 1, np.zeros(26, np.float32))
            link.incoming("s", message)


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


# ---- the frame reader under the transport's limits ----------------------------------------

FRAME_CASES = int(os.environ.get("GOSSIPLEARN_FUZZ_FRAMES", "2000"))
MAX_FRAME = 4096
BUDGET = 6000


def _random_frame(rng: random.Random) -> tuple[bytes, bytes | None]:
    """One frame's bytes and the payload it must yield (None: it must fail)."""
    payload = rng.randbytes(rng.choice([0, 1, 47, 48, 200, rng.randrange(MAX_FRAME + 1)]))
    kind = rng.randrange(8)
    if kind == 0:  # a header announcing far more than the limit (or any 64-bit size)
        return pack_header(rng.choice([MAX_FRAME + 1, 2**36, 2**64 - 1]), digest(b"")), None
    if kind == 1:  # one byte flipped anywhere: magic, version, length, digest or payload
        frame = bytearray(encode_frame(payload))
        position = rng.randrange(len(frame))
        frame[position] ^= 1 << rng.randrange(8)
        reserved = 5 <= position < 8  # reserved header bytes are ignored, by design
        return bytes(frame), payload if reserved else None
    if kind == 2:  # random junk
        return rng.randbytes(rng.randrange(1, 200)), None
    return encode_frame(payload), payload


def _stream(rng: random.Random) -> tuple[bytes, list[bytes], bool]:
    """Frames end to end, perhaps cut short: (bytes, payloads expected, must it fail)."""
    data, expected, failing = b"", [], False
    for _ in range(rng.randrange(1, 5)):
        frame, payload = _random_frame(rng)
        data += frame
        if payload is None:
            failing = True
            break
        expected.append(payload)
    if rng.random() < 0.2:  # truncated: the stream ends inside a frame
        data = data[: rng.randrange(len(data) + 1)]
    return data, expected, failing


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted({0, len(data), *(rng.randrange(len(data) + 1) for _ in range(rng.randrange(8)))})
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


def _fuzz_case(rng: random.Random) -> None:
    """Interleave 1-4 streams into readers sharing one budget; check every invariant."""
    budget = ByteBudget(BUDGET)
    refuse_over = rng.choice([None, 100, 2000])

    def admit(length: int) -> None:
        if refuse_over is not None and length > refuse_over:
            raise FrameRefused(f"{length} bytes is over budget", "RateLimited")

    streams = [_stream(rng) for _ in range(rng.randrange(1, 5))]
    readers = [FrameReader(MAX_FRAME, admit, budget) for _ in streams]
    got: list[list[bytes]] = [[] for _ in streams]
    failed = [False] * len(streams)
    pending = [(i, chunk) for i, (data, _, _) in enumerate(streams) for chunk in _chunks(rng, data)]
    order = sorted(range(len(pending)), key=lambda k: (rng.random(), pending[k][0]))
    # keep each stream's own chunks in order while interleaving streams at random
    queues = [[c for i2, c in pending if i2 == i] for i in range(len(streams))]
    for k in order:
        i = pending[k][0]
        chunk = queues[i].pop(0)
        if failed[i]:
            continue
        try:
            got[i].extend(readers[i].feed(chunk))
        except FrameError:  # anything else is a finding
            failed[i] = True
            assert readers[i].buffered == 0
        assert 0 <= budget.used <= BUDGET
        assert sum(r.buffered for r in readers) == budget.used
    for i, (_, expected, _) in enumerate(streams):
        assert got[i] == expected[: len(got[i])]  # never a wrong payload, never reordered
        if not failed[i]:
            with contextlib.suppress(FrameError):
                readers[i].close()
        readers[i].discard()
    assert budget.used == 0  # every byte went back, however each frame ended


def test_frame_reader_under_limits_random_streams() -> None:
    rng = random.Random(20240611)
    for _ in range(FRAME_CASES):
        _fuzz_case(rng)


def test_frame_reader_fuzz_yields_every_intact_frame() -> None:
    # the harness itself: clean streams, one reader, no refusals -> everything arrives
    rng = random.Random(1)
    payloads = [rng.randbytes(n) for n in (0, 1, HEADER_SIZE, 3000)]
    reader = FrameReader(MAX_FRAME, budget=ByteBudget(BUDGET))
    data = b"".join(encode_frame(p) for p in payloads)
    got = [p for chunk in _chunks(rng, data) for p in reader.feed(chunk)]
    assert got == payloads
