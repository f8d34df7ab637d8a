"""Limits on inbound traffic, per peer and across all peers, and counters of refusals.

Pure bookkeeping (the caller passes the clock), so the transport's trio thread and tests
use the same code. :class:`InboundLimits` bounds how many streams one peer may have in
flight and how many payload bytes per second it may push (a frame over either is refused
from its header), and, since a new identity costs nothing, also what all peers together
may hold: open inbound streams, buffered payload bytes, and the time one frame may take
(:func:`frame_deadline`). :class:`FrameSlots` bounds the frames read at once and names
the one to evict when a newcomer needs its slot (:func:`behind_schedule`).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from gossiplearn.errors import ConfigError

K = TypeVar("K")
MIB = 2**20

#: Peers whose buckets are remembered; the least recently seen is forgotten first (a full
#: bucket is what a forgotten peer starts with again, so forgetting only ever forgives).
MAX_TRACKED_PEERS = 4096


class TokenBucket:
    """``rate`` bytes per second, bursting up to ``capacity`` bytes.

    A frame larger than the whole capacity is admitted when the bucket is full and drives
    it into debt, so the long-run average stays at ``rate`` whatever the frame sizes.
    """

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = now

    def take(self, amount: int, now: float) -> bool:
        """Spend ``amount`` tokens if the bucket allows it now; False if not."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < min(amount, self.capacity):
            return False
        self.tokens -= amount
        return True


#: Defaults of the limits that hold across identities (see :class:`InboundLimits`).
DEFAULT_MAX_OPEN_STREAMS = 128
DEFAULT_MAX_BUFFERED_BYTES = 256 * MIB
DEFAULT_MIN_BYTES_PER_SECOND = 1 * MIB
DEFAULT_DEADLINE_FLOOR = 10.0
#: Seconds a frame may lag before it counts as behind schedule (and may be evicted).
DEFAULT_EVICTION_GRACE = 2.0


def frame_deadline(length: int | None, min_bytes_per_second: float, floor: float) -> float:
    """Seconds a whole frame may take: ``max(floor, length / min_bytes_per_second)``.

    ``length`` is the payload size its header announced (None while the header is still
    arriving: then the floor). The deadline covers the whole frame, not one idle read, so
    a sender trickling a byte a second cannot hold a stream (or its buffer) for long.
    """
    if length is None:
        return floor
    return max(floor, length / min_bytes_per_second)


def behind_schedule(
    received: int, elapsed: float, min_bytes_per_second: float, grace: float
) -> bool:
    """Whether a frame that has delivered ``received`` bytes in ``elapsed`` seconds is
    slower than ``min_bytes_per_second`` after a ``grace`` of seconds (an honest sender on
    any link we accept stays ahead; a trickle falls behind within the grace)."""
    return received < min_bytes_per_second * (elapsed - grace)


@dataclass
class FrameProgress:
    """How far one inbound frame has come (updated by its reading loop)."""

    started: float
    received: int = 0
    length: int | None = None


class FrameSlots(Generic[K]):
    """At most ``capacity`` frames read at once, across all peers.

    A newcomer takes a free slot (:meth:`try_enter`) or the slot of a frame that is
    behind schedule (:meth:`most_behind`, then :meth:`evict`), so slow frames cannot
    starve fast ones; nothing here waits or cancels: the caller does, with its own clock.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"the number of frames read at once must be >= 1, got {capacity}")
        self.capacity = capacity
        self.active: dict[K, FrameProgress] = {}

    def __len__(self) -> int:
        return len(self.active)

    def try_enter(self, key: K, progress: FrameProgress) -> bool:
        """Take a free slot for ``key``; False if all are taken."""
        if len(self.active) >= self.capacity:
            return False
        self.active[key] = progress
        return True

    def leave(self, key: K) -> None:
        """Free ``key``'s slot (idempotent: an evicted frame has none left)."""
        self.active.pop(key, None)

    def most_behind(self, now: float, min_bytes_per_second: float, grace: float) -> K | None:
        """The frame furthest behind schedule, or None if every frame keeps up."""
        worst: K | None = None
        worst_lag = 0.0
        for key, progress in self.active.items():
            elapsed = now - progress.started
            if not behind_schedule(progress.received, elapsed, min_bytes_per_second, grace):
                continue
            lag = min_bytes_per_second * (elapsed - grace) - progress.received
            if worst is None or lag > worst_lag:
                worst, worst_lag = key, lag
        return worst

    def evict(self, victim: K, key: K, progress: FrameProgress) -> None:
        """Hand ``victim``'s slot to ``key`` (the caller aborts the victim's frame)."""
        del self.active[victim]
        self.active[key] = progress


class ByteBudget:
    """Payload bytes buffered by all frames being received together, up to ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigError(f"max_buffered_bytes must be >= 1, got {limit}")
        self.limit = limit
        self.used = 0

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` more bytes; False (nothing reserved) if over the limit."""
        if self.used + amount > self.limit:
            return False
        self.used += amount
        return True

    def give(self, amount: int) -> None:
        """Return ``amount`` bytes taken earlier."""
        self.used = max(0, self.used - amount)


class InboundLimits:
    """Admission of inbound streams and frames, per sending peer and for all peers.

    Per peer: ``max_streams_per_peer`` streams of one peer may be open at once;
    ``bytes_per_second`` (None: unlimited) is each peer's sustained payload rate, with
    bursts of ``burst_seconds`` worth. For all peers together (new identities are free,
    so per-peer limits alone bound nothing): ``max_open_streams`` inbound streams open at
    once; ``max_buffered_bytes`` of payload held by unfinished frames (buffers grow as
    bytes arrive, so this bounds memory, not announcements); and each frame must finish
    within :meth:`deadline`, i.e. move at least ``min_bytes_per_second`` after a floor of
    ``deadline_floor`` seconds. Refusals are counted by reason in :attr:`rejected`,
    which other threads may read through :meth:`rejected_counts`.
    """

    def __init__(
        self,
        max_streams_per_peer: int = 32,
        bytes_per_second: float | None = None,
        burst_seconds: float = 2.0,
        *,
        max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        min_bytes_per_second: float = DEFAULT_MIN_BYTES_PER_SECOND,
        deadline_floor: float = DEFAULT_DEADLINE_FLOOR,
    ) -> None:
        if max_streams_per_peer < 1:
            raise ConfigError(f"max_streams_per_peer must be >= 1, got {max_streams_per_peer}")
        if bytes_per_second is not None and not bytes_per_second > 0:
            raise ConfigError(f"bytes_per_second must be > 0, got {bytes_per_second}")
        if not burst_seconds > 0:
            raise ConfigError(f"burst_seconds must be > 0, got {burst_seconds}")
        if max_open_streams < 1:
            raise ConfigError(f"max_open_streams must be >= 1, got {max_open_streams}")
        if not min_bytes_per_second > 0:
            raise ConfigError(f"min_bytes_per_second must be > 0, got {min_bytes_per_second}")
        if not deadline_floor > 0:
            raise ConfigError(f"deadline_floor must be > 0 seconds, got {deadline_floor}")
        self.max_streams_per_peer = max_streams_per_peer
        self.bytes_per_second = bytes_per_second
        self.burst_seconds = burst_seconds
        self.max_open_streams = max_open_streams
        self.buffer = ByteBudget(max_buffered_bytes)
        self.min_bytes_per_second = min_bytes_per_second
        self.deadline_floor = deadline_floor
        self.streams: Counter[str] = Counter()
        self.open_streams = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._rejected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open_stream(self, peer: str) -> bool:
        """Count a new inbound stream of ``peer``; False (and counted) if it has too many,
        or if all peers together have ``max_open_streams`` open."""
        if self.open_streams >= self.max_open_streams:
            self.reject("TooManyFrames")
            return False
        if self.streams[peer] >= self.max_streams_per_peer:
            self.reject("TooManyStreams")
            return False
        self.streams[peer] += 1
        self.open_streams += 1
        return True

    def close_stream(self, peer: str) -> None:
        self.open_streams = max(0, self.open_streams - 1)
        self.streams[peer] -= 1
        if self.streams[peer] <= 0:
            del self.streams[peer]

    def take(self, amount: int) -> bool:
        """Reserve ``amount`` more buffered bytes for a frame; False (and counted as
        BufferFull) if all frames together would hold more than ``max_buffered_bytes``."""
        if self.buffer.take(amount):
            return True
        self.reject("BufferFull")
        return False

    def give(self, amount: int) -> None:
        """Return buffered bytes (a frame finished or was dropped)."""
        self.buffer.give(amount)

    def deadline(self, length: int | None) -> float:
        """Seconds a frame announcing ``length`` payload bytes may take in all."""
        return frame_deadline(length, self.min_bytes_per_second, self.deadline_floor)

    def admit_bytes(self, peer: str, length: int, now: float) -> bool:
        """May ``peer`` send a ``length``-byte payload now? False (and counted) if not."""
        if self.bytes_per_second is None:
            return True
        bucket = self._buckets.get(peer)
        if bucket is None:
            capacity = self.bytes_per_second * self.burst_seconds
            bucket = self._buckets[peer] = TokenBucket(self.bytes_per_second, capacity, now)
            if len(self._buckets) > MAX_TRACKED_PEERS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(peer)
        if bucket.take(length, now):
            return True
        self.reject("RateLimited")
        return False

    def reject(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def rejected_counts(self) -> dict[str, int]:
        """A copy of the refusals so far, by reason (safe from any thread)."""
        with self._lock:
            return dict(self._rejected)
