"""The per-domain probe state machine and scheduler.

One `DomainProber` per monitored domain run; one asyncio task per configured probe
kind. Semantics follow kubelet/KubeVirt (docs/probes.md) ("State machine"),
which is kubelet's prober worker:

- initial states: readiness not ready until its first success, liveness alive,
  startup unknown;
- while a startup probe exists, liveness and readiness are not run until it succeeds;
  after its success it stops;
- the published state changes only when a run of consecutive identical results reaches
  successThreshold / failureThreshold, and only changes are published;
- an ERROR (the probe could not be run at all) is retried, up to 3 attempts within
  one period, and never counted;
- liveness (or startup) crossing failureThreshold calls listener.on_liveness_failed
  once; the worker then holds until `reset()` (a new run of the domain), which
  resets its counters;
- first-probe jitter in [0, period) when the daemon itself just started, so probes do
  not fire in lock-step.

Beyond kubelet (DESIGN.md, "Beyond KubeVirt"): a FAILURE is not counted while
access.suppression_reason() says why not (paused, migrating, saving, snapshotting,
starting), for every probe kind.

Probes run on a fixed-rate tick (initial delay, then every periodSeconds); a tick
missed because a probe ran long is skipped rather than run late in a burst.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Callable, Protocol

from vmhealth import spec
from vmhealth.monitor import coarse_timers
from vmhealth.monitor.coarse_timers import CoarseTimers
from vmhealth.monitor.interfaces import (
    GuestAccess,
    Outcome,
    ProbeListener,
    ProbeResult,
    StateChange,
)
from vmhealth.monitor.probes import ProbeRunner, run_probe
from vmhealth.spec import ProbeKind

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # kubelet's maxProbeRetries: an erroring probe is tried 3 times per period
STOP_TIMEOUT_SECONDS = 5.0

# (healthy, reason) of each kind before its first counted result (probe-semantics.md).
INITIAL_STATE: dict[ProbeKind, tuple[bool | None, str]] = {
    ProbeKind.READINESS: (False, "not ready: no successful probe yet"),
    ProbeKind.LIVENESS: (True, "alive: no failure yet"),
    ProbeKind.STARTUP: (None, "unknown: not probed yet"),
}
STATE_WORDS: dict[ProbeKind, tuple[str, str]] = {  # (healthy, unhealthy)
    ProbeKind.READINESS: ("ready", "not ready"),
    ProbeKind.LIVENESS: ("alive", "liveness failed"),
    ProbeKind.STARTUP: ("started", "startup failed"),
}
HOLDING_KINDS = (ProbeKind.LIVENESS, ProbeKind.STARTUP)


class Clock(Protocol):
    """Monotonic time and sleeping, injectable so tests can drive time by hand."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


class LoopClock:
    """The event loop's monotonic clock, waking sleepers on a coarse grid.

    Wake-ups are rounded up to a multiple of the grid (5 ms), and all sleepers of one
    grid slot are woken by a single loop timer (coarse_timers.py): with 2,000 probes a
    second that is one timer per slot instead of a timer and a heap entry per probe,
    for at most one grain of added lateness.
    """

    def __init__(self, timers: CoarseTimers | None = None) -> None:
        self._timers = timers or coarse_timers.SHARED

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timers.slot_time(deadline) <= loop.time():
            await asyncio.sleep(0)
            return
        # A future per sleeper: a cancelled sleeper (prober reset) cancels only its own.
        waiter = loop.create_future()
        self._timers.call_at(loop, deadline, functools.partial(_wake, waiter))
        await waiter


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


# The clock every prober uses unless given one: sharing it is what lets one timer per
# slot wake the probes of all domains.
SHARED_CLOCK = LoopClock()


@dataclass(frozen=True)
class ProbeSnapshot:
    """The state of one probe kind, for `vmhealth status` and the API."""

    kind: ProbeKind
    healthy: bool | None  # None = unknown
    reason: str
    last_result: ProbeResult | None
    consecutive_successes: int
    consecutive_failures: int
    on_hold: bool  # liveness/startup failed: not probed until the domain's next run
    waiting_for_startup: bool  # gated by a startup probe that has not succeeded yet
    finished: bool  # a startup probe that succeeded: not probed any more


class _Worker:
    """Counters and published state of one probe kind within one domain run."""

    def __init__(self, kind: ProbeKind, probe: spec.Probe) -> None:
        self.kind = kind
        self.probe = probe
        self.task: asyncio.Task | None = None
        self.clear()

    def clear(self) -> None:
        self.healthy, self.reason = INITIAL_STATE[self.kind]
        self.last_result: ProbeResult | None = None
        self.run_outcome: Outcome | None = None  # outcome of the current run of results
        self.run_length = 0
        self.on_hold = False
        self.finished = False

    def count(self, outcome: Outcome) -> int:
        if outcome is self.run_outcome:
            self.run_length += 1
        else:
            self.run_outcome, self.run_length = outcome, 1
        return self.run_length


class DomainProber:
    """Runs one domain's probes and reports to a ProbeListener.

    `start()` once; `reset()` when the domain starts a new run (restarted after a
    liveness failure, or stopped and started again); `stop()` when it is gone.
    """

    def __init__(self, health: spec.HealthSpec, access: GuestAccess,
                 listener: ProbeListener, *, clock: Clock | None = None,
                 rng: random.Random | None = None, runner: ProbeRunner = run_probe,
                 lateness_observer: Callable[[ProbeKind, float], None] | None = None,
                 ) -> None:
        self._access = access
        self._listener = listener
        self._clock = clock or SHARED_CLOCK
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._runner = runner
        self._lateness_observer = lateness_observer
        self._workers = {kind: _Worker(kind, probe) for kind, probe in health.probes().items()}
        self._has_startup = ProbeKind.STARTUP in self._workers
        self._startup_passed = not self._has_startup
        self._run = 0  # bumped by every (re)start, so a stale task never publishes

    # -- lifecycle -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(w.task is not None and not w.task.done() for w in self._workers.values())

    def start(self, *, jitter_first_probe: bool = False, run_age_seconds: float = 0.0) -> None:
        """Begin probing.

        jitter_first_probe: the daemon itself just started, so delay each first probe by
        a random part of its period (kubelet does the same after its own restart).
        run_age_seconds: how long the domain has already been running (an adopted
        domain), counted against initialDelaySeconds.
        """
        if self.running:
            raise RuntimeError(f"prober for {self._access.name} is already running")
        self._launch(jitter_first_probe=jitter_first_probe, run_age_seconds=run_age_seconds)

    def reset(self, *, run_age_seconds: float = 0.0) -> None:
        """A new run of the domain: cancel probes in flight, clear counters, start over.

        Publishes the kinds whose state changes back to its initial value (e.g. a held
        liveness returns to alive, readiness to not ready).
        """
        self._cancel()
        self._startup_passed = not self._has_startup
        for worker in self._workers.values():
            before = worker.healthy
            worker.clear()
            if worker.healthy != before:
                self._listener.on_state_change(StateChange(
                    kind=worker.kind, healthy=worker.healthy,
                    reason=f"{worker.reason} (new domain run)", result=None))
        self._launch(jitter_first_probe=False, run_age_seconds=run_age_seconds)

    async def stop(self) -> None:
        """Stop probing; waits (bounded) for probes in flight to unwind."""
        tasks = self._cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)

    def _cancel(self) -> list[asyncio.Task]:
        self._run += 1
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for worker in self._workers.values():
            worker.task = None
        return tasks

    def _launch(self, *, jitter_first_probe: bool, run_age_seconds: float) -> None:
        self._run += 1
        run_started = self._clock.now() - run_age_seconds
        loop = asyncio.get_running_loop()
        for worker in self._workers.values():
            worker.task = loop.create_task(
                self._work(worker, self._run, run_started, jitter_first_probe),
                name=f"probe {self._access.name} {worker.kind.short}")

    # -- queries ---------------------------------------------------------------
    def snapshot(self) -> dict[ProbeKind, ProbeSnapshot]:
        return {kind: ProbeSnapshot(
            kind=kind, healthy=w.healthy, reason=w.reason, last_result=w.last_result,
            consecutive_successes=w.run_length if w.run_outcome is Outcome.SUCCESS else 0,
            consecutive_failures=w.run_length if w.run_outcome is Outcome.FAILURE else 0,
            on_hold=w.on_hold, waiting_for_startup=self._gated(w), finished=w.finished)
            for kind, w in self._workers.items()}

    async def probe_once(self, kind: ProbeKind) -> ProbeResult:
        """Run one probe now (`vmhealth probe DOMAIN KIND`); changes no state, publishes nothing."""
        worker = self._workers.get(kind)
        if worker is None:
            raise LookupError(f"domain {self._access.name} has no {kind.value}")
        return await self._runner(worker.probe, self._access)

    # -- the worker ------------------------------------------------------------
    def _gated(self, worker: _Worker) -> bool:
        return worker.kind is not ProbeKind.STARTUP and not self._startup_passed

    async def _work(self, worker: _Worker, run: int, run_started: float,
                    jitter: bool) -> None:
        clock = self._clock
        period = worker.probe.period_seconds
        if jitter:
            await clock.sleep_until(clock.now() + self._rng.random() * period)
        tick = max(clock.now(), run_started + worker.probe.initial_delay_seconds)
        while run == self._run and not worker.finished:
            await clock.sleep_until(tick)
            if run != self._run:
                return
            if not worker.on_hold and not self._gated(worker):
                if self._lateness_observer is not None:
                    self._lateness_observer(worker.kind, clock.now() - tick)
                try:
                    await self._probe_and_count(worker, run, period_end=tick + period)
                except Exception:
                    # A bug must not silently end this domain's monitoring.
                    log.exception("probe %s of %s crashed", worker.kind.short,
                                  self._access.name)
            tick += period
            now = clock.now()
            if tick < now:  # the probe ran past its period: skip the ticks it missed
                tick += ((now - tick) // period + 1) * period

    async def _probe_and_count(self, worker: _Worker, run: int, *, period_end: float) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            suppressed_before = self._access.suppression_reason()
            result = await self._runner(worker.probe, self._access)
            if run != self._run:
                return  # reset or stopped while the probe ran
            worker.last_result = result
            if result.outcome is not Outcome.ERROR:
                self._count(worker, result, suppressed_before)
                return
            self._listener.on_result(worker.kind, result, counted=False)
            if attempt == MAX_ATTEMPTS or self._clock.now() >= period_end:
                return

    def _count(self, worker: _Worker, result: ProbeResult,
               suppressed_before: str | None) -> None:
        if result.outcome is Outcome.FAILURE:
            suppression = suppressed_before or self._access.suppression_reason()
            if suppression is not None:
                self._listener.on_result(worker.kind, result, counted=False)
                return
        self._listener.on_result(worker.kind, result, counted=True)
        run_length = worker.count(result.outcome)
        success = result.outcome is Outcome.SUCCESS
        probe = worker.probe
        if run_length < (probe.success_threshold if success else probe.failure_threshold):
            return
        healthy_word, unhealthy_word = STATE_WORDS[worker.kind]
        if success:
            reason = f"{healthy_word}: {result.message}"
        else:
            reason = (f"{unhealthy_word}: {run_length} consecutive failure"
                      f"{'s' if run_length > 1 else ''}; last: {result.message}")
        self._publish(worker, success, reason, result)
        if success and worker.kind is ProbeKind.STARTUP:
            worker.finished = True
            self._startup_passed = True
        elif not success and worker.kind in HOLDING_KINDS:
            worker.on_hold = True
            worker.run_length = 0
            self._listener.on_liveness_failed(result)

    def _publish(self, worker: _Worker, healthy: bool, reason: str,
                 result: ProbeResult) -> None:
        worker.reason = reason
        if worker.healthy == healthy:
            return
        worker.healthy = healthy
        self._listener.on_state_change(StateChange(kind=worker.kind, healthy=healthy,
                                                   reason=reason, result=result))
