"""Tests for our stream framing: any chunking reassembles exactly; every bad frame raises."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.transport.base import TransportError
from gossiplearn.transport.framing import (
    HEADER_SIZE,
    MAGIC,
    FrameError,
    FrameReader,
    FrameTooLarge,
    Status,
    chunks,
    decode_header,
    digest,
    encode_frame,
    encode_header,
    pack_header,
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given (unsorted, possibly repeated) offsets."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _feed_all(reader: FrameReader, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out.extend(reader.feed(piece))
    return out


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=40),
)
def test_any_chunking_reassembles_every_frame(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    reader = FrameReader(max_frame_bytes=4096)
    assert _feed_all(reader, _split(stream, cuts)) == payloads
    assert not reader.in_frame
    reader.close()  # at a frame boundary: no error


@settings(max_examples=50, deadline=None)
@given(size=st.integers(min_value=0, max_value=300_000), step=st.integers(1, 70_000))
def test_large_payload_in_fixed_chunks(size: int, step: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    frame = encode_frame(payload)
    reader = FrameReader(max_frame_bytes=size)
    got = _feed_all(reader, [frame[i : i + step] for i in range(0, len(frame), step)])
    assert got == [payload]


def test_wanted_counts_down_to_the_frame_boundary() -> None:
    reader = FrameReader()
    assert reader.wanted == HEADER_SIZE
    frame = encode_frame(b"abcdef")
    reader.feed(frame[:10])
    assert reader.wanted == HEADER_SIZE - 10 and reader.received == 10
    reader.feed(frame[10:HEADER_SIZE])
    assert reader.header is not None and reader.header.length == 6
    assert reader.wanted == 6 and reader.received == HEADER_SIZE
    assert reader.feed(frame[HEADER_SIZE:]) == [b"abcdef"]
    assert reader.wanted == HEADER_SIZE


def test_empty_payload_is_a_frame() -> None:
    reader = FrameReader(max_frame_bytes=0)
    assert reader.feed(encode_frame(b"")) == [b""]


def test_corrupt_payload_fails_the_digest() -> None:
    frame = bytearray(encode_frame(b"model weights" * 100))
    frame[HEADER_SIZE + 5] ^= 0x01
    with pytest.raises(FrameError, match="digest"):
        FrameReader().feed(bytes(frame))


def test_corrupt_digest_field_fails() -> None:
    frame = bytearray(encode_frame(b"payload"))
    frame[HEADER_SIZE - 1] ^= 0xFF
    with pytest.raises(FrameError, match="digest"):
        FrameReader().feed(bytes(frame))


def test_bad_magic_is_rejected_from_the_header() -> None:
    frame = b"HTTP" + encode_frame(b"x")[4:]
    with pytest.raises(FrameError, match="magic"):
        FrameReader().feed(frame[:HEADER_SIZE])


def test_unknown_version_is_rejected() -> None:
    frame = bytearray(encode_frame(b"x"))
    frame[4] = 99
    with pytest.raises(FrameError, match="version"):
        FrameReader().feed(bytes(frame))


def test_oversize_is_rejected_before_any_allocation() -> None:
    # A header announcing 2**62 bytes: accepting it would try to allocate exabytes.
    header = pack_header(2**62, digest(b""))
    reader = FrameReader(max_frame_bytes=1 << 20)
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(header)
    assert info.value.length == 2**62 and info.value.limit == 1 << 20
    assert isinstance(info.value, TransportError)


def test_sender_side_limit() -> None:
    with pytest.raises(FrameTooLarge):
        encode_header(b"x" * 11, max_frame_bytes=10)


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_truncated_stream_raises_on_close(cut: int) -> None:
    reader = FrameReader()
    assert reader.feed(encode_frame(b"0123456789")[:cut]) == []
    with pytest.raises(FrameError, match="stream ended inside a frame"):
        reader.close()


def test_reader_is_poisoned_after_an_error() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError):
        reader.feed(b"JUNK" + bytes(HEADER_SIZE))
    with pytest.raises(FrameError):
        reader.feed(encode_frame(b"fine"))


def test_decode_header_checks_its_size() -> None:
    with pytest.raises(FrameError, match="48 bytes"):
        decode_header(MAGIC, max_frame_bytes=10)


def test_chunks_are_zero_copy_views() -> None:
    data = bytes(range(10))
    views = list(chunks(data, 4))
    assert [bytes(v) for v in views] == [data[0:4], data[4:8], data[8:10]]
    assert all(v.obj is data for v in views)


def test_status_descriptions() -> None:
    assert Status(0) is Status.OK
    assert "max_frame_bytes" in Status.TOO_LARGE.describe()


# ---- admission: refusing a frame from its header -------------------------------------


def test_admit_sees_the_length_before_any_payload_buffer_exists() -> None:
    from gossiplearn.transport.framing import FrameRefused

    seen: list[int] = []

    def admit(length: int) -> None:
        seen.append(length)
        if length > 10:
            raise FrameRefused(f"{length} bytes is over budget")

    reader = FrameReader(1 << 20, admit)
    frame = encode_frame(b"x" * 11)
    with pytest.raises(FrameRefused):
        reader.feed(frame[:HEADER_SIZE])  # the header alone is enough to refuse
    assert seen == [11] and reader.header is None
    ok = FrameReader(1 << 20, admit)
    assert ok.feed(encode_frame(b"small")) == [b"small"]


def test_token_bucket_allows_bursts_then_the_average_rate() -> None:
    from gossiplearn.transport.limits import TokenBucket

    bucket = TokenBucket(rate=100.0, capacity=200.0, now=0.0)
    assert bucket.take(150, now=0.0) and not bucket.take(100, now=0.0)
    assert bucket.take(100, now=0.5)  # 50 left + 50 refilled
    assert not bucket.take(1, now=0.5)
    # a frame larger than the whole capacity passes once the bucket is full, into debt
    assert bucket.take(500, now=10.0) and not bucket.take(1, now=12.0)
    assert bucket.take(1, now=13.1)


def test_inbound_limits_count_refusals_by_reason() -> None:
    from gossiplearn.errors import ConfigError
    from gossiplearn.transport.limits import MAX_TRACKED_PEERS, InboundLimits

    limits = InboundLimits(max_streams_per_peer=2, bytes_per_second=100.0, burst_seconds=1.0)
    assert limits.open_stream("a") and limits.open_stream("a")
    assert not limits.open_stream("a") and limits.open_stream("b")
    limits.close_stream("a")
    assert limits.open_stream("a")
    assert limits.admit_bytes("a", 100, now=0.0) and not limits.admit_bytes("a", 1, now=0.0)
    assert limits.admit_bytes("b", 100, now=0.0)  # every peer has its own bucket
    assert limits.rejected_counts() == {"TooManyStreams": 1, "RateLimited": 1}
    for peer in range(MAX_TRACKED_PEERS + 5):
        limits.admit_bytes(str(peer), 1, now=1.0)
    assert len(limits._buckets) == MAX_TRACKED_PEERS  # white-box: memory stays bounded
    assert InboundLimits(bytes_per_second=None).admit_bytes("a", 10**12, now=0.0)
    for bad in (dict(max_streams_per_peer=0), dict(bytes_per_second=0), dict(burst_seconds=0)):
        with pytest.raises(ConfigError):
            InboundLimits(**bad)  # type: ignore[arg-type]


# ---- limits that hold across identities ----------------------------------------------


class _Budget:
    """A ByteBudget that also remembers the most it ever lent."""

    def __init__(self, limit: int) -> None:
        from gossiplearn.transport.limits import ByteBudget

        self.inner = ByteBudget(limit)
        self.peak = 0

    def take(self, amount: int) -> bool:
        ok = self.inner.take(amount)
        self.peak = max(self.peak, self.inner.used)
        return ok

    def give(self, amount: int) -> None:
        self.inner.give(amount)


def test_a_huge_announcement_holds_only_the_bytes_that_arrived() -> None:
    budget = _Budget(1 << 20)
    reader = FrameReader(1 << 40, budget=budget)
    assert reader.feed(pack_header(2**36, digest(b"")) + b"abc") == []
    assert reader.buffered == 3 and budget.inner.used == 3
    pieces = reader._pieces  # white-box: no reservation, only the piece that arrived
    assert pieces is not None and sum(len(piece) for piece in pieces) == 3
    reader.discard()
    assert budget.inner.used == 0 and reader.buffered == 0
    with pytest.raises(FrameError, match="abandoned"):
        reader.feed(b"x")  # a discarded reader stays poisoned


def test_the_shared_budget_refuses_growth_and_is_given_back() -> None:
    from gossiplearn.transport.framing import FrameRefused

    budget = _Budget(100)
    first, second = FrameReader(budget=budget), FrameReader(budget=budget)
    first.feed(encode_frame(b"a" * 80)[:-10])  # 70 payload bytes held
    with pytest.raises(FrameRefused) as info:
        second.feed(encode_frame(b"b" * 40))
    assert info.value.reason == "BufferFull" and "max_buffered_bytes" in str(info.value)
    assert budget.inner.used == 70  # the refused frame holds nothing
    assert first.feed(encode_frame(b"a" * 80)[-10:]) == [b"a" * 80]
    assert budget.inner.used == 0  # a completed frame gives its bytes back
    corrupt = FrameReader(budget=budget)
    bad = bytearray(encode_frame(b"c" * 50))
    bad[-1] ^= 1
    with pytest.raises(FrameError, match="digest"):
        corrupt.feed(bytes(bad))
    assert budget.inner.used == 0 and budget.peak <= 100  # so does a failed one


def test_frame_deadline_is_a_floor_or_the_size_at_the_minimum_rate() -> None:
    from gossiplearn.transport.limits import frame_deadline

    assert frame_deadline(None, 1e6, 10.0) == 10.0  # the header has a deadline too
    assert frame_deadline(1_000, 1e6, 10.0) == 10.0
    assert frame_deadline(64_000_000, 1e6, 10.0) == 64.0


def test_behind_schedule_spares_a_steady_sender_and_catches_a_trickle() -> None:
    from gossiplearn.transport.limits import behind_schedule

    rate, grace = 1000.0, 2.0
    assert not behind_schedule(0, 1.9, rate, grace)  # still in its grace
    assert behind_schedule(48, 3.0, rate, grace)  # one byte a second
    assert not behind_schedule(1500 * 30, 30.0, rate, grace)  # 1.5x the minimum rate


def test_frame_slots_evict_the_frame_furthest_behind() -> None:
    from gossiplearn.errors import ConfigError
    from gossiplearn.transport.limits import FrameProgress, FrameSlots

    slots: FrameSlots[str] = FrameSlots(2)
    fast, slow = FrameProgress(started=0.0, received=10_000), FrameProgress(started=0.0)
    assert slots.try_enter("fast", fast) and slots.try_enter("slow", slow)
    newcomer = FrameProgress(started=5.0)
    assert not slots.try_enter("new", newcomer)
    assert slots.most_behind(1.0, 1000.0, 2.0) is None  # nobody is behind yet
    assert slots.most_behind(5.0, 1000.0, 2.0) == "slow"
    slots.evict("slow", "new", newcomer)
    assert set(slots.active) == {"fast", "new"}
    slots.leave("slow")  # the evicted frame's own exit is harmless
    assert len(slots) == 2
    with pytest.raises(ConfigError):
        FrameSlots(0)


def test_inbound_limits_bound_all_peers_together() -> None:
    from gossiplearn.errors import ConfigError
    from gossiplearn.transport.limits import InboundLimits

    limits = InboundLimits(max_streams_per_peer=8, max_open_streams=3, max_buffered_bytes=10)
    assert all(limits.open_stream(f"fresh-{i}") for i in range(3))  # 3 new identities
    assert not limits.open_stream("fresh-3")  # the 4th is over the total, whoever it is
    limits.close_stream("fresh-0")
    assert limits.open_stream("fresh-3")
    assert limits.take(10) and not limits.take(1)
    limits.give(10)
    assert limits.take(1)
    assert limits.deadline(None) == 10.0 and limits.deadline(2**30) == 1024.0
    assert limits.rejected_counts() == {"TooManyFrames": 1, "BufferFull": 1}
    for bad in (
        dict(max_open_streams=0),
        dict(max_buffered_bytes=0),
        dict(min_bytes_per_second=0),
        dict(deadline_floor=0),
    ):
        with pytest.raises(ConfigError):
            InboundLimits(**bad)


def test_bytes_chunks_are_kept_without_copies_and_mutable_ones_are_copied() -> None:
    payload = os.urandom(5000)
    reader = FrameReader()
    assert reader.feed(encode_header(payload)) == []
    [whole] = reader.feed(payload)
    assert whole is payload  # one chunk of exactly the payload: handed on as it is
    reader = FrameReader()
    buffer = bytearray(encode_frame(payload))
    assert reader.feed(buffer[:2000]) == []
    view = memoryview(buffer)[2000:4000]
    assert reader.feed(view) == []
    buffer[:4000] = bytes(4000)  # reused before the frame completes
    assert reader.feed(bytes(encode_frame(payload)[4000:])) == [payload]


def test_a_corrupt_frame_fed_in_views_of_one_chunk_fails_the_digest() -> None:
    frame = bytearray(encode_frame(os.urandom(70_000)))
    frame[-1] ^= 1
    data = bytes(frame)
    reader = FrameReader()
    with pytest.raises(FrameError, match="digest"):
        for start in range(0, len(data), 65_507):
            reader.feed(data[start : start + 65_507])
