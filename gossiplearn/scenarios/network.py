"""The simulated network and hardware: seeded per-peer compute speed, per-link latency and
per-peer upload bandwidth.

Latency comes from each peer's position in a unit square (latency grows with distance), so
every link has a fixed latency without storing n² numbers; transfers from one peer share
its uplink and are sent one after another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gossiplearn.types import PeerId


@dataclass(frozen=True)
class NetworkSettings:
    #: Latency between the closest and the farthest two peers, in seconds.
    latency_min: float = 0.01
    latency_max: float = 0.1
    #: Probability that a message is lost (drawn by the simulator).
    loss: float = 0.0
    #: Upload bandwidth range, bytes per second (drawn log-uniformly per peer).
    bandwidth_min: float = 2.5e6
    bandwidth_max: float = 2.5e7
    #: Compute speed factor range around 1 (uniform), and the cost of one training sample.
    speed_spread: float = 0.2
    seconds_per_sample: float = 1e-4


class NetworkModel:
    """Per-peer draws are made once, in order of peer registration, from one generator."""

    def __init__(self, settings: NetworkSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng
        self._position: dict[PeerId, tuple[float, float]] = {}
        self._bandwidth: dict[PeerId, float] = {}
        self._speed: dict[PeerId, float] = {}
        self._uplink_free: dict[PeerId, float] = {}

    def add_peer(self, peer: PeerId) -> None:
        s = self.settings
        x, y = self.rng.random(2)
        self._position[peer] = (float(x), float(y))
        log_bw = self.rng.uniform(math.log(s.bandwidth_min), math.log(s.bandwidth_max))
        self._bandwidth[peer] = math.exp(log_bw)
        self._speed[peer] = 1.0 + float(self.rng.uniform(-s.speed_spread, s.speed_spread))
        self._uplink_free[peer] = 0.0

    def latency(self, a: PeerId, b: PeerId) -> float:
        (xa, ya), (xb, yb) = self._position[a], self._position[b]
        s = self.settings
        return s.latency_min + (s.latency_max - s.latency_min) * math.dist(
            (xa, ya), (xb, yb)
        ) / math.sqrt(2)

    def arrival_time(self, now: float, sender: PeerId, receiver: PeerId, size: int) -> float:
        """When ``size`` bytes sent now reach the receiver, queueing on the sender's uplink."""
        start = max(now, self._uplink_free[sender])
        done = start + size / self._bandwidth[sender]
        self._uplink_free[sender] = done
        return done + self.latency(sender, receiver)

    def training_time(self, peer: PeerId, samples: int) -> float:
        return samples * self.settings.seconds_per_sample / self._speed[peer]
