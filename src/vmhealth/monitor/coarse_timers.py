"""Timers on a coarse grid: one event-loop timer per grid slot, however many callbacks.

At 2,000 probes a second, one loop timer per probe start and per connection deadline
costs a heap entry each (and in the standard loop, a Python-level comparison per heap
step); callbacks due in the same few milliseconds can share one. Callbacks run no
earlier than asked and at most one `grain` later; they cannot be cancelled, so they
check for themselves whether they still matter (a finished connection ignores its
deadline).
"""

from __future__ import annotations

import asyncio
import math
from typing import Callable

DEFAULT_GRAIN_SECONDS = 0.005


class CoarseTimers:
    def __init__(self, grain: float = DEFAULT_GRAIN_SECONDS) -> None:
        if grain <= 0:
            raise ValueError("grain must be positive")
        self.grain = grain
        self._slots: dict[int, list[Callable[[], object]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def call_at(self, loop: asyncio.AbstractEventLoop, when: float,
                callback: Callable[[], object]) -> None:
        """Run callback() at loop time `when`, rounded up to the grid."""
        if loop is not self._loop:  # slots belong to one loop (tests run many)
            self._loop, self._slots = loop, {}
        slot = math.ceil(when / self.grain)
        callbacks = self._slots.get(slot)
        if callbacks is None:
            callbacks = self._slots[slot] = []
            loop.call_at(slot * self.grain, self._run, loop, slot)
        callbacks.append(callback)

    def forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Drop every callback waiting for `loop` (when it stops for good: what they
        hold, down to libvirt domain handles, must not outlive it)."""
        if loop is self._loop:
            self._slots = {}

    def _run(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if loop is not self._loop:
            return
        for callback in self._slots.pop(slot, ()):
            callback()


# Shared by every prober's clock and every probe connection's deadline.
SHARED = CoarseTimers()
