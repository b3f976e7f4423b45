"""Timers on a coarse grid: one event-loop timer per grid slot, however many callbacks.

At 2,000 probes a second, one loop timer per probe start and per connection deadline
costs a heap entry each (and in the standard loop, a Python-level comparison per heap
step); callbacks due in the same few milliseconds can share one. Callbacks run no
earlier than asked and at most one `grain` later; they cannot be cancelled, so they
check for themselves whether they still matter (a finished connection ignores its
deadline). Slots are kept per event loop, each dropped with its loop (or by
`forget` when the loop stops for good).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Callable

DEFAULT_GRAIN_SECONDS = 0.005


class CoarseTimers:
    def __init__(self, grain: float = DEFAULT_GRAIN_SECONDS) -> None:
        if grain <= 0:
            raise ValueError("grain must be positive")
        self.grain = grain
        # loop -> grid slot -> callbacks due in it
        self._loops: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, list[Callable[[], object]]]] = \
            weakref.WeakKeyDictionary()

    def call_at(self, loop: asyncio.AbstractEventLoop, when: float,
                callback: Callable[[], object]) -> None:
        """Run callback() at loop time `when`, rounded up to the grid."""
        slots = self._loops.get(loop)
        if slots is None:
            slots = self._loops[loop] = {}
        slot = math.ceil(when / self.grain)
        callbacks = slots.get(slot)
        if callbacks is None:
            callbacks = slots[slot] = []
            loop.call_at(slot * self.grain, self._run, loop, slot)
        callbacks.append(callback)

    def forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop every callback waiting for `loop` (when it stops for good: what they
        hold, down to libvirt domain handles, must not outlive it)."""
        self._loops.pop(loop, None)

    def _run(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        slots = self._loops.get(loop)
        if slots is None:
            return  # forgotten
        for callback in slots.pop(slot, ()):
            callback()


# Shared by every prober's clock and every probe connection's deadline.
SHARED = CoarseTimers()
