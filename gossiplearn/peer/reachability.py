"""Which peers failed to take our messages lately, and when to try them again.

How it works: after a failed send a peer is *unreachable*: sends to it are skipped (they
would each wait for a timeout) and it is probed again after a delay that doubles from
``first`` up to ``cap`` seconds, counted from the start of the last try (a short cap:
after a partition heals, traffic resumes within about one cap plus a handshake; a try
costs one connection attempt). A successful send makes it reachable again, and so does a
valid message from the peer unless a send to it failed within ``first`` seconds. After
``give_up`` seconds without success it is forgotten (the caller stops probing). Each
transition is reported once, so a caller logs one line when a peer goes and one when it
is back, not a line per attempt.

Invariants: no I/O, no clock of its own (``now`` is passed in); one entry per peer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Down:
    since: float
    retry_at: float
    delay: float
    failures: int = 1
    failed_at: float = 0.0


class Reachability:
    """Per-peer backoff after failed sends."""

    def __init__(self, first: float = 1.0, cap: float = 2.0, give_up: float = 300.0) -> None:
        self.first, self.cap, self.give_up = first, cap, give_up
        self._down: dict[str, _Down] = {}

    def failed(self, peer: str, now: float) -> bool:
        """A send to ``peer`` failed; True if it was reachable until now."""
        down = self._down.get(peer)
        if down is None:
            self._down[peer] = _Down(now, now + self.first, self.first, failed_at=now)
            return True
        down.failures += 1
        down.failed_at = now
        down.delay = min(down.delay * 2, self.cap)
        down.retry_at = now + down.delay
        return False

    def skip(self, peer: str, now: float) -> bool:
        """True while ``peer`` is unreachable and not due for another try."""
        down = self._down.get(peer)
        return down is not None and now < down.retry_at

    def wait(self, peer: str, now: float) -> float:
        """Seconds from ``now`` until ``peer`` is due for another try (0 if it is due or
        reachable)."""
        down = self._down.get(peer)
        return 0.0 if down is None else max(0.0, down.retry_at - now)

    def delay(self, peer: str) -> float:
        """Seconds until the next try of an unreachable peer (0 if reachable)."""
        down = self._down.get(peer)
        return 0.0 if down is None else down.delay

    def unreachable(self, peer: str) -> bool:
        return peer in self._down

    def expired(self, peer: str, now: float) -> bool:
        """True if ``peer`` has been unreachable for longer than ``give_up``."""
        down = self._down.get(peer)
        return down is not None and now - down.since > self.give_up

    def reached(self, peer: str, now: float) -> float | None:
        """``peer`` took a message (or sent one): seconds it was unreachable, or None if
        it was not."""
        down = self._down.pop(peer, None)
        return None if down is None else now - down.since

    def heard_from(self, peer: str, now: float) -> float | None:
        """``peer`` sent a valid message: like :meth:`reached`, unless a send to it failed
        less than ``first`` seconds ago. A peer we cannot send to but that sends to us
        (one-way, or hostile) then flips back at most once per ``first`` seconds, not once
        per message it sends: each flip costs a failed send, a probe and two log lines."""
        down = self._down.get(peer)
        if down is not None and now - down.failed_at < self.first:
            return None
        return self.reached(peer, now)

    def forget(self, peer: str) -> None:
        self._down.pop(peer, None)

    def __len__(self) -> int:
        return len(self._down)
