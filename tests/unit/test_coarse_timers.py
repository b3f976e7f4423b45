"""CoarseTimers shared by event loops: each loop's slots are its own.

The daemon runs one loop, but the shared timers may serve others in the same process
(a benchmark's, a sandbox's): one loop's use must never drop another's callbacks.
"""

from __future__ import annotations

import asyncio

from vmhealth.monitor.coarse_timers import CoarseTimers

GRAIN = 0.01


async def _fires(timers: CoarseTimers, delay: float) -> bool:
    loop = asyncio.get_running_loop()
    fired = loop.create_future()
    timers.call_at(loop, loop.time() + delay, lambda: fired.set_result(True))
    return await asyncio.wait_for(fired, 5)


def test_another_loop_does_not_drop_a_loops_waiting_callbacks():
    timers = CoarseTimers(GRAIN)

    async def first_loop() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        timers.call_at(loop, loop.time() + 0.3, lambda: fired.set_result(True))
        # Meanwhile a second loop, in another thread, uses the same timers.
        other = await loop.run_in_executor(None, asyncio.run, _fires(timers, GRAIN))
        return other, await asyncio.wait_for(fired, 5)

    assert asyncio.run(first_loop()) == (True, True)


def test_a_new_loop_is_served_after_the_last_one_closed():
    timers = CoarseTimers(GRAIN)
    assert asyncio.run(_fires(timers, GRAIN)) is True
    assert asyncio.run(_fires(timers, GRAIN)) is True
