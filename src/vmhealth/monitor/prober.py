"""The per-domain probe state machine and scheduler.

One `DomainProber` per monitored domain run; each configured probe kind is a `_Worker`
driven by clock callbacks, not a task: at 2,000 probes a second a task wake per probe
costs more than the probe (docs/probes.md). A tick starts a run through the probe's
starter (vmhealth.monitor.probes) and the run's result comes back as a callback.
Semantics follow kubelet/KubeVirt (docs/probe-semantics.md, "State machine"),
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
  and starts counting again from zero: liveness is never switched off for the rest of
  a run. If the action restarts the domain, `reset()` starts a new run; if it was
  skipped, failed or is `none`, the next failureThreshold failures call it again (the
  daemon's back-off paces the actions, docs/daemon.md);
- when a startup probe succeeds, readiness (and liveness) are probed at once, not at
  their next period (kubelet does the same);
- a SKIPPED result (this guest's previous agent call still in flight) is neither
  counted nor retried: the tick simply did not happen;
- first-probe jitter in [0, period) when the daemon itself just started, so probes do
  not fire in lock-step.

Beyond kubelet (docs/probe-semantics.md, "Beyond KubeVirt"): a FAILURE is not counted while
access.suppression_reason() says why not (paused, migrating, saving, snapshotting,
starting), for every probe kind.

Probes run on a fixed-rate tick (initial delay, then every periodSeconds); a tick
missed because a probe ran long is skipped rather than run late in a burst.

The native lane (native_lane.py, docs/probes.md): a readiness or liveness probe that
has settled - healthy, its success threshold met, its last result a success the
handler marked repeatable - is handed to the native engine, which repeats it on the
same schedule and counts identical successes without waking Python. Any other answer
hands the tick back: a timeout is counted here as the FAILURE it is; anything else
(refused, another status, stale addresses, no socket) is probed again at once by the
Python handler, whose result is counted as usual. Nothing is decided in the engine.
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
    Cancel,
    GuestAccess,
    Outcome,
    ProbeListener,
    ProbeResult,
    ProbeStarter,
    Recipe,
    StateChange,
)
from vmhealth.monitor.native_lane import TIMEOUT, Handback, NativeLanes, SilentSuccesses
from vmhealth.monitor.probes import (
    PausedStarter,
    StarterFactory,
    starter_for,
)
from vmhealth.spec import ProbeKind

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # kubelet's maxProbeRetries: an erroring probe is tried 3 times per period
STOP_TIMEOUT_SECONDS = 5.0

# (healthy, reason) of each kind before its first counted result (docs/probe-semantics.md).
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
ACTING_KINDS = (ProbeKind.LIVENESS, ProbeKind.STARTUP)


class Clock(Protocol):
    """Monotonic time and timed callbacks, injectable so tests can drive time by hand."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> None:
        """Call callback() at `when` or later (not cancellable: callers check staleness)."""


class LoopClock:
    """The event loop's monotonic clock, calling back on a coarse grid.

    Times are rounded up to a multiple of the grid (5 ms), and all callbacks of one
    grid slot are run by a single loop timer (coarse_timers.py): with 2,000 probes a
    second that is one timer per slot instead of a timer and a heap entry per probe,
    for at most one grain of added lateness.
    """

    def __init__(self, timers: CoarseTimers | None = None) -> None:
        self._timers = timers or coarse_timers.SHARED

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], object]) -> None:
        self._timers.call_at(asyncio.get_running_loop(), when, callback)


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
    waiting_for_startup: bool  # gated by a startup probe that has not succeeded yet
    finished: bool  # a startup probe that succeeded: not probed any more


class _Worker:
    """Counters, published state and schedule of one probe kind within one domain run."""

    def __init__(self, kind: ProbeKind, probe: spec.Probe, starter: ProbeStarter) -> None:
        self.kind = kind
        self.probe = probe
        self.start = starter
        self.cancel: Cancel | None = None  # of the run in flight
        self.tick = 0.0  # the scheduled time of the current or next probe
        self.attempt = 0
        self.suppressed_before: str | None = None
        self.lane: int | None = None  # the native lane repeating this probe, if any
        self.lane_recipe: Recipe | None = None  # what the lane repeats
        # Callbacks bound to one run of the prober (made once per run, not per tick).
        self.on_tick: Callable[[], None] = _nothing
        self.on_result: Callable[[ProbeResult], None] = _nothing
        self.clear()

    def clear(self) -> None:
        self.healthy, self.reason = INITIAL_STATE[self.kind]
        self.last_result: ProbeResult | None = None
        self.run_outcome: Outcome | None = None  # outcome of the current run of results
        self.run_length = 0
        self.finished = False

    def count(self, outcome: Outcome) -> int:
        if outcome is self.run_outcome:
            self.run_length += 1
        else:
            self.run_outcome, self.run_length = outcome, 1
        return self.run_length


def _nothing(*_args: object) -> None:
    pass


def _starter(health: spec.HealthSpec, probe: spec.Probe,
             starters: StarterFactory) -> ProbeStarter:
    if health.guest_agent_ping_paused and isinstance(probe.handler, spec.GuestAgentPing):
        return PausedStarter()
    return starters(probe)


class _LaneOwner:
    """What the native lanes call back for one worker's lane (native_lane.LaneOwner)."""

    __slots__ = ("_prober", "_worker", "_run")

    def __init__(self, prober: DomainProber, worker: _Worker, run: int) -> None:
        self._prober, self._worker, self._run = prober, worker, run

    def lane_ended(self, handback: Handback) -> None:
        self._prober._lane_ended(self._worker, self._run, handback)

    def lane_counts(self, silent: SilentSuccesses) -> None:
        self._prober._lane_counts(self._worker, self._run, silent)


class DomainProber:
    """Runs one domain's probes and reports to a ProbeListener.

    `start()` once; `reset()` when the domain starts a new run (restarted after a
    liveness failure, or stopped and started again); `stop()` when it is gone.
    """

    def __init__(self, health: spec.HealthSpec, access: GuestAccess,
                 listener: ProbeListener, *, clock: Clock | None = None,
                 rng: random.Random | None = None, starters: StarterFactory = starter_for,
                 lanes: NativeLanes | None = None,
                 ) -> None:
        self._access = access
        self._lanes = lanes
        self._listener = listener
        self._clock = clock or SHARED_CLOCK
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._workers = {kind: _Worker(kind, probe, _starter(health, probe, starters))
                         for kind, probe in health.probes().items()}
        self._has_startup = ProbeKind.STARTUP in self._workers
        self._startup_passed = not self._has_startup
        self._run = 0  # bumped by every (re)start and stop, so a stale callback does nothing
        self._active = False

    # -- lifecycle -------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._active

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
        self._cancel()  # what a cancelled run was still unwinding is left to finish
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
        self._active = False
        tasks = []
        for worker in self._workers.values():
            self._recall(worker)
            cancel, worker.cancel = worker.cancel, None
            if cancel is not None:
                task = cancel()
                if task is not None:
                    tasks.append(task)
        return tasks

    def _launch(self, *, jitter_first_probe: bool, run_age_seconds: float) -> None:
        self._run += 1
        self._active = True
        run, clock = self._run, self._clock
        now = clock.now()
        run_started = now - run_age_seconds
        for worker in self._workers.values():
            probe = worker.probe
            worker.on_tick = functools.partial(self._on_tick, worker, run)
            worker.on_result = functools.partial(self._on_result, worker, run)
            jitter = self._rng.random() * probe.period_seconds if jitter_first_probe else 0.0
            worker.tick = max(now + jitter, run_started + probe.initial_delay_seconds)
            clock.call_at(worker.tick, worker.on_tick)

    # -- queries ---------------------------------------------------------------
    def snapshot(self) -> dict[ProbeKind, ProbeSnapshot]:
        self.fold_lanes()
        return {kind: ProbeSnapshot(
            kind=kind, healthy=w.healthy, reason=w.reason, last_result=w.last_result,
            consecutive_successes=w.run_length if w.run_outcome is Outcome.SUCCESS else 0,
            consecutive_failures=w.run_length if w.run_outcome is Outcome.FAILURE else 0,
            waiting_for_startup=self._gated(w), finished=w.finished)
            for kind, w in self._workers.items()}

    # -- the worker ------------------------------------------------------------
    def _gated(self, worker: _Worker) -> bool:
        return worker.kind is not ProbeKind.STARTUP and not self._startup_passed

    def _on_tick(self, worker: _Worker, run: int) -> None:
        if (run != self._run or worker.finished or worker.cancel is not None
                or worker.lane is not None or self._clock.now() < worker.tick):
            return  # stale: a run is in flight, the lane has it, or it was moved earlier
        if self._gated(worker):
            self._schedule_next(worker)
            return
        worker.attempt = 1
        self._attempt(worker)

    def _attempt(self, worker: _Worker) -> None:
        worker.suppressed_before = self._access.suppression_reason()
        try:
            worker.cancel = worker.start(self._access, worker.on_result)
        except Exception:
            # A bug must not silently end this domain's monitoring.
            log.exception("probe %s of %s crashed", worker.kind.short, self._access.name)
            self._schedule_next(worker)

    def _on_result(self, worker: _Worker, run: int, result: ProbeResult) -> None:
        if run != self._run:
            return  # reset or stopped while the probe ran
        worker.cancel = None
        try:
            retry = self._take(worker, result)
        except Exception:
            log.exception("counting probe %s of %s failed", worker.kind.short,
                          self._access.name)
            retry = False
        if run != self._run or worker.finished:
            return  # the listener reset or stopped the prober; a startup probe is done
        if retry:
            worker.attempt += 1
            self._attempt(worker)
        elif not self._offload(worker, run, result):
            self._schedule_next(worker)

    def _schedule_next(self, worker: _Worker) -> None:
        worker.tick = self._next_tick(worker)
        self._clock.call_at(worker.tick, worker.on_tick)

    def _next_tick(self, worker: _Worker) -> float:
        """The next tick; ticks missed because a probe ran long are skipped, not run late."""
        period = worker.probe.period_seconds
        tick = worker.tick + period
        now = self._clock.now()
        if tick < now:
            tick += ((now - tick) // period + 1) * period
        return tick

    # -- the native lane ---------------------------------------------------------
    def _offload(self, worker: _Worker, run: int, result: ProbeResult) -> bool:
        """Hand a settled probe to the native lane; False: keep probing it here."""
        lanes = self._lanes
        if (lanes is None or result.outcome is not Outcome.SUCCESS
                or worker.kind is ProbeKind.STARTUP or worker.healthy is not True
                or worker.run_outcome is not Outcome.SUCCESS
                or worker.run_length < worker.probe.success_threshold):
            return False
        recipe = worker.start.repeatable
        if recipe is None or recipe.message != result.message:
            return False
        valid_until = (self._access.addresses_valid_until() if recipe.from_cache
                       else float("inf"))
        tick = self._next_tick(worker)
        lane = lanes.offload(_LaneOwner(self, worker, run), recipe,
                             timeout=worker.probe.timeout_seconds,
                             period=worker.probe.period_seconds, tick=tick,
                             valid_until=valid_until)
        if lane is None:
            return False
        worker.lane, worker.lane_recipe, worker.tick = lane, recipe, tick
        return True

    def native_kinds(self) -> set[ProbeKind]:
        """The probe kinds the native lane is repeating right now (for `status`)."""
        return {kind for kind, worker in self._workers.items() if worker.lane is not None}

    def fold_lanes(self) -> None:
        """Take the silent successes of this prober's lanes (before its state is read)."""
        if self._lanes is None:
            return
        for worker in self._workers.values():
            if worker.lane is not None:
                self._lanes.fold(worker.lane)

    def recall_lanes(self) -> None:
        """Take every probe back from the native lane and schedule it here again (the
        guest's addresses may have changed: the Python handler looks them up)."""
        for worker in self._workers.values():
            if worker.lane is not None:
                self._recall(worker)
                self._schedule_next(worker)

    def _recall(self, worker: _Worker) -> None:
        lane, worker.lane = worker.lane, None
        if lane is not None and self._lanes is not None:
            self._absorb(worker, self._lanes.recall(lane), current=True)

    def _absorb(self, worker: _Worker, silent: SilentSuccesses | None, *,
                current: bool) -> None:
        """Count successes the lane repeated: for metrics always, for the state machine
        when they belong to the current run (`current`)."""
        recipe = worker.lane_recipe
        if silent is None or silent.count == 0 or recipe is None:
            return
        result = ProbeResult(Outcome.SUCCESS, recipe.message, silent.last_duration,
                             silent.last_started_at)
        self._listener.on_repeated_successes(worker.kind, result, silent.count,
                                             silent.buckets, silent.seconds)
        if current:
            worker.last_result = result
            worker.run_length += silent.count  # run_outcome is SUCCESS while offloaded

    def _lane_counts(self, worker: _Worker, run: int, silent: SilentSuccesses) -> None:
        self._absorb(worker, silent, current=run == self._run)

    def _lane_ended(self, worker: _Worker, run: int, handback: Handback) -> None:
        current = run == self._run and worker.lane == handback.lane
        self._absorb(worker, handback.silent, current=current)
        if not current:
            return
        worker.lane = None
        worker.tick = handback.tick
        worker.attempt = 1
        recipe = worker.lane_recipe  # set when the lane was started
        if handback.reason == TIMEOUT and recipe is not None:
            # The engine waited timeoutSeconds for an answer: that is this tick's result.
            worker.suppressed_before = self._access.suppression_reason()
            self._on_result(worker, run, ProbeResult(
                Outcome.FAILURE, recipe.timeout_message, handback.duration,
                handback.started_at))
            return
        # A different answer, stale addresses or no socket: the handler probes again
        # now and says exactly what it finds.
        self._attempt(worker)

    def _take(self, worker: _Worker, result: ProbeResult) -> bool:
        """Count one result; True when an ERROR is to be retried within this period."""
        worker.last_result = result
        if result.outcome is Outcome.SKIPPED:
            self._listener.on_result(worker.kind, result, counted=False)
            return False
        if result.outcome is not Outcome.ERROR:
            self._count(worker, result, worker.suppressed_before)
            return False
        self._listener.on_result(worker.kind, result, counted=False)
        return (worker.attempt < MAX_ATTEMPTS
                and self._clock.now() < worker.tick + worker.probe.period_seconds)

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
            self._probe_gated_now()
        elif not success and worker.kind in ACTING_KINDS:
            worker.run_length = 0  # the next failureThreshold failures act again
            self._listener.on_liveness_failed(result)

    def _probe_gated_now(self) -> None:
        """Startup just succeeded: probe the kinds it gated now, not a period later."""
        now = self._clock.now()
        for worker in self._workers.values():
            if worker.kind is not ProbeKind.STARTUP and worker.tick > now:
                # The tick scheduled before comes while this run is in flight or
                # before worker.tick: _on_tick ignores it.
                worker.tick = now
                self._clock.call_at(now, worker.on_tick)

    def _publish(self, worker: _Worker, healthy: bool, reason: str,
                 result: ProbeResult) -> None:
        worker.reason = reason
        if worker.healthy == healthy:
            return
        worker.healthy = healthy
        self._listener.on_state_change(StateChange(kind=worker.kind, healthy=healthy,
                                                   reason=reason, result=result))
