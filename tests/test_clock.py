"""The Peer's virtual clock: waits take no real time, computation takes its real time."""

from __future__ import annotations

import asyncio
import time

from gossiplearn.peer.clock import LoopClock, VirtualClock


async def test_a_long_wait_takes_no_real_time() -> None:
    clock = VirtualClock()
    async with asyncio.timeout(10), clock:
        started, real = clock.time(), time.monotonic()
        await clock.sleep(3600.0)
        assert clock.time() - started >= 3600.0
    assert time.monotonic() - real < 5.0


async def test_timers_fire_in_order_and_cancelled_ones_never() -> None:
    clock = VirtualClock()
    fired: list[str] = []
    async with asyncio.timeout(10), clock:
        clock.call_later(20.0, fired.append, "late")
        clock.call_later(10.0, fired.append, "early")
        clock.call_later(15.0, fired.append, "cancelled").cancel()
        await clock.sleep(30.0)
    assert fired == ["early", "late"]


async def test_time_does_not_jump_while_a_thread_computes() -> None:
    clock = VirtualClock()
    async with asyncio.timeout(10), clock:
        sleeper = asyncio.create_task(clock.sleep(100.0))
        started = clock.time()
        await clock.run_blocking(time.sleep, 0.3)  # a training job: 0.3 s of real work
        during = clock.time() - started
        assert 0.3 <= during < 50.0, during  # its real time passed; no jump to the sleeper
        await sleeper
        assert clock.time() - started >= 100.0


async def test_the_loop_clock_is_the_event_loops() -> None:
    clock = LoopClock()
    assert abs(clock.time() - asyncio.get_running_loop().time()) < 0.1
    assert await clock.run_blocking(sum, [1, 2, 3]) == 6
