"""Per-peer limits on inbound traffic: a token bucket of bytes, and counters of refusals.

Pure bookkeeping (the caller passes the clock), so the transport's trio thread and tests
use the same code. :class:`InboundLimits` bounds how many streams one peer may have in
flight and how many payload bytes per second it may push; a frame over either limit is
refused from its header, before any payload buffer is allocated.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

from gossiplearn.errors import ConfigError

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


class InboundLimits:
    """Admission of inbound streams and frames, per sending peer.

    ``max_streams_per_peer`` streams of one peer may be open at once; ``bytes_per_second``
    (None: unlimited) is each peer's sustained payload rate, with bursts of
    ``burst_seconds`` worth. Refusals are counted by reason in :attr:`rejected`, which
    other threads may read through :meth:`rejected_counts`.
    """

    def __init__(
        self,
        max_streams_per_peer: int = 32,
        bytes_per_second: float | None = None,
        burst_seconds: float = 2.0,
    ) -> None:
        if max_streams_per_peer < 1:
            raise ConfigError(f"max_streams_per_peer must be >= 1, got {max_streams_per_peer}")
        if bytes_per_second is not None and not bytes_per_second > 0:
            raise ConfigError(f"bytes_per_second must be > 0, got {bytes_per_second}")
        if not burst_seconds > 0:
            raise ConfigError(f"burst_seconds must be > 0, got {burst_seconds}")
        self.max_streams_per_peer = max_streams_per_peer
        self.bytes_per_second = bytes_per_second
        self.burst_seconds = burst_seconds
        self.streams: Counter[str] = Counter()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._rejected: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open_stream(self, peer: str) -> bool:
        """Count a new inbound stream of ``peer``; False (and counted) if it has too many."""
        if self.streams[peer] >= self.max_streams_per_peer:
            self.reject("TooManyStreams")
            return False
        self.streams[peer] += 1
        return True

    def close_stream(self, peer: str) -> None:
        self.streams[peer] -= 1
        if self.streams[peer] <= 0:
            del self.streams[peer]

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
