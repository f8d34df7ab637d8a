"""The Peer's clock: real (the event loop's) or virtual (tests).

A Peer reads time, sleeps, sets timers and runs blocking work (training, evaluation,
encoding) through its clock. :class:`LoopClock` is the running asyncio loop's monotonic
clock. :class:`VirtualClock` is for tests on the in-memory transport, in the manner of
trio's ``MockClock(rate=1, autojump_threshold=0)``: time runs as fast as real time and
jumps to the next timer once everything is waiting, so a test of minutes of protocol
time takes as long as its computation.

"Everything is waiting" means: no blocking work is running in a thread, and the event
loop has gone round ``settle_passes`` times without a sleep, timer or thread job being
added or finished. Network I/O must be on the event loop (the in-memory transport is);
a real socket's latency is not seen, so a virtual clock is not for libp2p.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Seconds, monotonic."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Cancellable:
        """Call ``callback(*args)`` on the event loop after ``delay`` seconds."""
        ...

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread (the event loop keeps running)."""
        ...


class LoopClock:
    """Real time: the running event loop's clock."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Cancellable:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(function, *args)


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():  # not cancelled meanwhile
        sleeper.set_result(None)


class _Timer:
    def __init__(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time that runs as fast as real time and jumps to the next timer whenever every task
    is waiting (trio's ``MockClock(rate=1, autojump_threshold=0)``).

    Computation (training, in a thread) takes its real time, as on a real peer; waits for
    timers and timeouts take none. Use it as an async context manager around the test's
    body (it runs the task that moves time)::

        clock = VirtualClock()
        async with clock:
            peer = Peer(..., clock=clock)
            ...
            await clock.sleep(30)  # 30 seconds of the peers' time
    """

    def __init__(self, settle_passes: int = 20) -> None:
        self.settle_passes = settle_passes
        self._offset = 0.0  # seconds jumped so far
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._busy = 0
        self._changes = 0  # bumped by anything that may wake a task
        self._runner: asyncio.Task[None] | None = None

    def time(self) -> float:
        return asyncio.get_running_loop().time() + self._offset

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_later(seconds, _wake, woken)
        await woken

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Cancellable:
        timer = _Timer(callback, args)
        heapq.heappush(self._timers, (self.time() + max(0.0, delay), next(self._order), timer))
        self._changes += 1
        return timer

    async def run_blocking(self, function: Callable[..., T], *args: Any) -> T:
        self._busy += 1
        self._changes += 1
        try:
            return await asyncio.to_thread(function, *args)
        finally:
            self._busy -= 1
            self._changes += 1

    async def __aenter__(self) -> VirtualClock:
        self._runner = asyncio.create_task(self._advance())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _advance(self) -> None:
        while True:
            self._fire_due()
            if not await self._quiet():
                continue
            if self._timers:  # everything waits: jump to the next timer
                self._offset += max(0.0, self._timers[0][0] - self.time())
            else:
                await asyncio.sleep(0.001)  # nothing scheduled: let real events come

    async def _quiet(self) -> bool:
        """True if no thread job runs and the loop went round ``settle_passes`` times
        without a timer or thread job being added or finished."""
        for _ in range(self.settle_passes):
            if self._busy:
                await asyncio.sleep(0.001)  # a thread computes, in real time
                return False
            seen = self._changes
            await asyncio.sleep(0)
            if self._changes != seen:
                return False
        return True

    def _fire_due(self) -> None:
        now = self.time()
        while self._timers and (self._timers[0][2].cancelled or self._timers[0][0] <= now):
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._changes += 1
                timer.callback(*timer.args)
