"""The prober's state machine in the details a small slip would break unnoticed
(written for mutation testing, docs/testing.md): what reset publishes, what a
snapshot says, and the hand-over to and from the native lane, here against a fake
lane engine driven by hand (test_prober_native_lane.py runs the real one)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from tests.unit.prober_support import (
    Access,
    FakeClock,
    Harness,
    Recorder,
    health,
    probe,
    scenario,
    settle,
)

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome, ProbeResult, Recipe, StateChange
from vmhealth.monitor.native_lane import DIFFERENT, TIMEOUT, Handback, SilentSuccesses
from vmhealth.monitor.prober import DomainProber
from vmhealth.spec import ProbeKind

S, F, E = Outcome.SUCCESS, Outcome.FAILURE, Outcome.ERROR
READY = ProbeKind.READINESS
LIVE = ProbeKind.LIVENESS


# -- reset and snapshot --------------------------------------------------------

@scenario
async def test_reset_publishes_the_initial_state_of_each_kind_that_changes_only():
    h = Harness(health(readiness=probe(READY), liveness=probe(LIVE)),
                {READY: [S], LIVE: [S]})
    h.prober.start()
    await h.clock.advance(0.5)
    assert [c.healthy for c in h.listener.changes] == [True]  # ready; alive already
    h.prober.reset()
    assert h.listener.changes[1:] == [StateChange(
        kind=READY, healthy=False,
        reason="not ready: no successful probe yet (new domain run)", result=None)]
    await h.prober.stop()


@scenario
async def test_reset_publishes_a_held_liveness_alive_again():
    h = Harness(health(liveness=probe(LIVE, failure_threshold=1)), {LIVE: [F]})
    h.prober.start()
    await h.clock.advance(0.5)
    h.prober.reset()
    assert h.listener.changes[-1] == StateChange(
        kind=LIVE, healthy=True, reason="alive: no failure yet (new domain run)", result=None)
    await h.prober.stop()


@scenario
async def test_reset_counts_the_initial_delay_from_now_unless_told_the_runs_age():
    h = Harness(health(readiness=probe(READY, initial_delay_seconds=5, period_seconds=10)),
                {READY: [S]})
    h.prober.start()
    await h.clock.advance(2)
    h.prober.reset()
    await h.clock.advance(10)
    assert h.script.times(READY) == [7]
    h.prober.reset(run_age_seconds=3)
    await h.clock.advance(10)
    assert h.script.times(READY) == [7, 14]
    await h.prober.stop()


@scenario
async def test_a_snapshot_names_its_kind_reason_and_only_the_current_runs_count():
    h = Harness(health(readiness=probe(READY, failure_threshold=5), liveness=probe(LIVE)),
                {READY: [S, S, F, F], LIVE: [S]})
    h.prober.start()
    await h.clock.advance(1.5)
    snap = h.prober.snapshot()
    assert {kind: s.kind for kind, s in snap.items()} == {READY: READY, LIVE: LIVE}
    assert snap[READY].reason == "ready: readiness success"
    assert (snap[READY].consecutive_successes, snap[READY].consecutive_failures) == (2, 0)
    assert snap[LIVE].reason == "alive: liveness success"
    await h.clock.advance(2)
    snap = h.prober.snapshot()[READY]
    assert (snap.consecutive_successes, snap.consecutive_failures) == (0, 2)
    assert snap.healthy is True and snap.reason == "ready: readiness success"
    assert snap.last_result.outcome is F
    assert not snap.waiting_for_startup and not snap.finished
    await h.prober.stop()


@scenario
async def test_a_failure_reason_counts_failures_in_the_singular_and_plural():
    h = Harness(health(readiness=probe(READY, failure_threshold=1),
                       liveness=probe(LIVE, failure_threshold=2)),
                {READY: [S, F], LIVE: [F]})
    h.prober.start()
    await h.clock.advance(1.5)
    reasons = {c.kind: c.reason for c in h.listener.changes if c.healthy is False}
    assert reasons == {READY: "not ready: 1 consecutive failure; last: readiness failure",
                       LIVE: "liveness failed: 2 consecutive failures; last: liveness failure"}
    await h.prober.stop()


@scenario
async def test_startup_success_probes_the_gated_kinds_at_once_and_only_once():
    h = Harness(health(startup=probe(ProbeKind.STARTUP, period_seconds=2),
                       readiness=probe(READY, period_seconds=3),
                       liveness=probe(LIVE, period_seconds=5)),
                {ProbeKind.STARTUP: [F, S], READY: [S], LIVE: [S]})
    h.prober.start()
    await h.clock.advance(12.5)
    assert h.script.times(ProbeKind.STARTUP) == [0, 2]
    assert h.script.times(READY) == [2, 5, 8, 11]
    assert h.script.times(LIVE) == [2, 7, 12]
    await h.prober.stop()


# -- the native lane, faked -----------------------------------------------------

RECIPE = Recipe(host="192.0.2.1", port=80, request=b"GET / HTTP/1.1\r\n\r\n", status=200,
                message="readiness ok", from_cache=True,
                timeout_message="HTTP GET port 80: timed out after 1s")


@dataclass
class Lane:
    owner: object
    recipe: Recipe
    timeout: float
    period: float
    tick: float
    valid_until: float


@dataclass
class FakeLanes:
    """NativeLanes' contract (native_lane.py) without an engine: lanes are numbered
    from 1, and the test ends them (handback) or reports their counts (fold)."""

    refuse: bool = False
    lanes: dict[int, Lane] = field(default_factory=dict)
    ended: list[int] = field(default_factory=list)
    folded: list[int] = field(default_factory=list)
    unfolded: dict[int, SilentSuccesses] = field(default_factory=dict)

    def offload(self, owner, recipe, *, timeout, period, tick, valid_until):
        if self.refuse:
            return None
        lane = len(self.lanes) + len(self.ended) + 1
        self.lanes[lane] = Lane(owner, recipe, timeout, period, tick, valid_until)
        return lane

    def recall(self, lane):
        self.lanes.pop(lane, None)
        self.ended.append(lane)
        return self.unfolded.pop(lane, None)

    def fold(self, lane):
        self.folded.append(lane)
        silent = self.unfolded.pop(lane, None)
        if silent is not None:
            self.lanes[lane].owner.lane_counts(silent)

    def hand_back(self, lane, reason, tick, *, silent=None, started_at=0.0, duration=0.0):
        owner = self.lanes.pop(lane).owner
        self.ended.append(lane)
        owner.lane_ended(Handback(lane, reason, tick, started_at, duration, silent))


def silent(count: int) -> SilentSuccesses:
    return SilentSuccesses(count, (count,), 0.001 * count, 1234.5, 0.002)


class RepeatableStarter:
    """A starter whose successes the lane may repeat; results by script, message fixed
    per outcome (the lane takes a success only if its message is the recipe's)."""

    def __init__(self, clock: FakeClock, outcomes: list[Outcome], recipe: Recipe | None):
        self.clock, self.outcomes, self.repeatable = clock, outcomes, recipe
        self.calls: list[float] = []

    def __call__(self, access, on_done):
        self.calls.append(self.clock.now())
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        message = "readiness ok" if outcome is S else f"readiness {outcome.value}"
        result = ProbeResult(outcome, message, 0.01, 1000.0)
        asyncio.get_running_loop().call_soon(on_done, result)
        return lambda: None


@dataclass
class LaneAccess(Access):
    valid_until: float = 100.0
    asked: int = 0

    def addresses_valid_until(self) -> float:
        self.asked += 1
        return self.valid_until


@dataclass
class Listener(Recorder):
    repeated: list[tuple] = field(default_factory=list)
    timed_results: list[ProbeResult] = field(default_factory=list)

    def on_result(self, kind, result, *, counted):
        super().on_result(kind, result, counted=counted)
        self.timed_results.append(result)

    def on_repeated_successes(self, kind, last, count, buckets, seconds):
        self.repeated.append((kind, last, count, buckets, seconds))


class LaneRun:
    def __init__(self, outcomes=(S,), *, recipe=RECIPE, kind=READY, lanes=None, **timing):
        self.clock = FakeClock()
        self.lanes = lanes if lanes is not None else FakeLanes()
        self.access = LaneAccess()
        self.listener = Listener()
        self.starter = RepeatableStarter(self.clock, list(outcomes), recipe)
        timing.setdefault("period_seconds", 1)
        timing.setdefault("timeout_seconds", 1)
        probe_ = spec.Probe(handler=spec.TcpSocket(port=80), **timing)
        health_ = spec.HealthSpec(**{f"{kind.name.lower()}_probe": probe_})
        self.kind = kind
        self.prober = DomainProber(health_, self.access, self.listener, clock=self.clock,
                                   starters=lambda _probe: self.starter, lanes=self.lanes)


async def settled(run: LaneRun) -> LaneRun:
    """`run` started, its first success handed to the lane (lane 1)."""
    run.prober.start()
    await run.clock.advance(0.5)
    assert list(run.lanes.lanes) == [1]
    return run


@scenario
async def test_a_settled_probe_moves_to_the_lane_with_its_schedule_and_limits():
    run = LaneRun(success_threshold=2, timeout_seconds=3, period_seconds=5)
    run.prober.start()
    await run.clock.advance(0.5)
    assert run.lanes.lanes == {}  # one success: not settled yet
    await run.clock.advance(5)
    assert list(run.lanes.lanes) == [1]
    lane = run.lanes.lanes[1]
    assert (lane.recipe, lane.timeout, lane.period, lane.tick, lane.valid_until) == (
        RECIPE, 3, 5, 10, 100.0)
    assert run.prober.native_kinds() == {READY}
    await run.clock.advance(20)
    assert run.starter.calls == [0, 5]  # the lane probes now, not Python
    await run.prober.stop()
    assert run.lanes.ended == [1] and run.prober.native_kinds() == set()


@scenario
async def test_a_recipe_from_the_spec_host_never_expires():
    run = await settled(LaneRun(recipe=RECIPE._replace(from_cache=False)))
    assert run.lanes.lanes[1].valid_until == float("inf")
    assert run.access.asked == 0
    await run.prober.stop()


@pytest.mark.parametrize("outcomes,options,runs", [
    ([F], {}, 4),  # a failure
    ([S], {"kind": ProbeKind.STARTUP}, 1),  # startup ends at its success
    ([S], {"recipe": None}, 4),  # the handler cannot repeat it
    ([S], {"recipe": RECIPE._replace(message="another success")}, 4),
    ([S], {"lanes": FakeLanes(refuse=True)}, 4),  # the engine refused
])
def test_what_is_not_settled_or_not_repeatable_stays_in_python(outcomes, options, runs):
    @scenario
    async def body():
        run = LaneRun(outcomes, **options)
        run.prober.start()
        await run.clock.advance(3.5)
        assert run.lanes.lanes == {} and run.prober.native_kinds() == set()
        assert len(run.starter.calls) == runs  # every period, but startup once
        await run.prober.stop()
    body()


@scenario
async def test_an_unhealthy_probe_is_not_offloaded_until_its_state_is_healthy():
    run = await settled(LaneRun([S], kind=LIVE, failure_threshold=1))
    assert list(run.lanes.lanes) == [1]  # liveness starts alive: settled at once
    await run.prober.stop()
    readiness = LaneRun([F, S, S], success_threshold=2)
    readiness.prober.start()
    await readiness.clock.advance(1.5)
    assert readiness.lanes.lanes == {}  # F S: not ready yet
    await readiness.clock.advance(1)
    assert list(readiness.lanes.lanes) == [1]
    await readiness.prober.stop()


@scenario
async def test_silent_successes_reach_the_listener_and_the_current_run():
    run = await settled(LaneRun())
    run.lanes.unfolded[1] = silent(4)
    snap = run.prober.snapshot()[READY]  # a snapshot folds the lanes first
    assert run.lanes.folded == [1]
    assert snap.consecutive_successes == 5
    assert snap.last_result == ProbeResult(S, "readiness ok", 0.002, 1234.5)
    assert run.listener.repeated == [(READY, snap.last_result, 4, (4,), 0.004)]
    run.prober.fold_lanes()  # nothing more to fold: nothing more counted
    assert run.lanes.folded == [1, 1] and len(run.listener.repeated) == 1
    await run.prober.stop()


@scenario
async def test_recalled_lanes_count_their_successes_and_probe_again_in_python():
    run = await settled(LaneRun())
    run.lanes.unfolded[1] = silent(3)
    run.prober.recall_lanes()
    assert run.lanes.ended == [1] and run.prober.native_kinds() == set()
    assert run.prober.snapshot()[READY].consecutive_successes == 4
    await run.clock.advance(2)
    assert len(run.starter.calls) == 2 and run.starter.calls[1] <= 2  # in Python again
    assert list(run.lanes.lanes) == [2]  # and settled again
    await run.prober.stop()


@scenario
async def test_a_timeout_handed_back_is_one_counted_failure_not_probed_again():
    run = await settled(LaneRun(failure_threshold=1))
    run.clock.t = 3.2
    run.lanes.hand_back(1, TIMEOUT, 3.0, silent=silent(2), started_at=2000.0, duration=1.0)
    assert run.starter.calls == [0]
    assert run.listener.timed_results[-1] == ProbeResult(
        F, "HTTP GET port 80: timed out after 1s", 1.0, 2000.0)
    assert run.listener.results[-1] == (READY, F, True)
    assert run.listener.repeated[0][2] == 2
    assert run.listener.changes[-1].reason == (
        "not ready: 1 consecutive failure; last: HTTP GET port 80: timed out after 1s")
    await run.clock.advance(1)
    assert run.starter.calls == [0, 4]  # the tick after the one handed back
    await run.prober.stop()


@scenario
async def test_a_timeout_while_suppressed_is_not_counted():
    run = await settled(LaneRun(failure_threshold=1))
    run.access.suppressed = "paused"
    run.lanes.hand_back(1, TIMEOUT, 1.0)
    assert run.listener.results[-1] == (READY, F, False)
    assert run.prober.snapshot()[READY].healthy is True
    await run.prober.stop()


@scenario
async def test_another_answer_is_probed_again_at_once_with_every_retry():
    run = await settled(LaneRun([S, E, E, E, S]))
    run.clock.t = 1.1
    run.lanes.hand_back(1, DIFFERENT, 1.0, silent=silent(1))
    await settle()
    # Probed again at once, and an ERROR retried up to three attempts in all.
    assert run.starter.calls == [0, 1.1, 1.1, 1.1]
    assert [r[1] for r in run.listener.results] == [S, E, E, E]
    assert run.prober.snapshot()[READY].consecutive_successes == 2  # one by the lane
    await run.clock.advance(1)
    assert run.starter.calls == [0, 1.1, 1.1, 1.1, 2]
    await run.prober.stop()


@scenario
async def test_a_handback_from_a_stale_lane_or_run_counts_for_metrics_only():
    run = await settled(LaneRun())
    owner = run.lanes.lanes[1].owner
    run.prober.reset()  # the lane is recalled; its handback may still be on its way
    assert run.lanes.ended == [1]
    await run.clock.advance(0.5)
    assert list(run.lanes.lanes) == [2]
    before = run.prober.snapshot()[READY]
    calls = list(run.starter.calls)
    owner.lane_ended(Handback(1, DIFFERENT, 1.0, 0.0, 0.0, silent(5)))
    owner.lane_counts(silent(2))
    await settle()
    assert [r[2] for r in run.listener.repeated] == [5, 2]  # metrics see them
    after = run.prober.snapshot()[READY]
    assert after.consecutive_successes == before.consecutive_successes  # the state does not
    assert run.starter.calls == calls and run.prober.native_kinds() == {READY}
    # The current run, but a lane that is not this worker's any more: ignored as well.
    lane2 = run.lanes.lanes[2].owner
    run.prober.recall_lanes()
    lane2.lane_ended(Handback(2, DIFFERENT, 1.0, 0.0, 0.0, None))
    await settle()
    assert run.starter.calls == calls
    await run.prober.stop()


@scenario
async def test_a_startup_worker_is_never_offloaded_and_gated_kinds_wait():
    clock = FakeClock()
    lanes = FakeLanes()
    starter = RepeatableStarter(clock, [S], RECIPE)
    health_ = spec.HealthSpec(
        startup_probe=spec.Probe(handler=spec.TcpSocket(port=80), period_seconds=1),
        readiness_probe=spec.Probe(handler=spec.TcpSocket(port=80), period_seconds=1))
    prober = DomainProber(health_, LaneAccess(), Listener(), clock=clock,
                          starters=lambda _probe: starter, lanes=lanes)
    prober.start()
    await clock.advance(0.5)
    assert prober.native_kinds() == {READY}
    assert len(lanes.lanes) == 1
    await prober.stop()


# -- the rest of the state machine ---------------------------------------------------

@scenario
async def test_before_the_first_probe_nothing_is_known_and_nothing_runs():
    h = Harness(health(readiness=probe(READY)), {READY: [S]})
    assert h.prober.running is False
    snap = h.prober.snapshot()[READY]
    assert snap.last_result is None and snap.finished is False
    assert (snap.consecutive_successes, snap.consecutive_failures) == (0, 0)
    h.prober.start()
    assert h.prober.running is True
    try:
        h.prober.start()
    except RuntimeError as exc:
        assert str(exc) == "prober for web1 is already running"
    else:
        raise AssertionError("a second start was accepted")
    await h.prober.stop()
    assert h.prober.running is False


@scenario
async def test_a_state_change_and_a_liveness_failure_carry_the_result():
    h = Harness(health(liveness=probe(LIVE, failure_threshold=1)), {LIVE: [F]})
    h.prober.start()
    await h.clock.advance(0.5)
    assert h.listener.changes[0].result.outcome is F
    assert h.listener.changes[0].result.message == "liveness failure"
    assert [r.message for r in h.listener.liveness_failed] == ["liveness failure"]
    await h.prober.stop()


def test_only_a_paused_guest_agent_ping_is_paused():
    from vmhealth.monitor.prober import _starter
    from vmhealth.monitor.probes import PausedStarter

    made = []

    def factory(probe_):
        made.append(probe_)
        return "started by the factory"

    ping = spec.Probe(handler=spec.GuestAgentPing())
    tcp = spec.Probe(handler=spec.TcpSocket(port=22))
    assert isinstance(_starter(spec.HealthSpec(guest_agent_ping_paused=True), ping, factory),
                      PausedStarter)
    assert _starter(spec.HealthSpec(guest_agent_ping_paused=False), ping, factory) == (
        "started by the factory")
    assert _starter(spec.HealthSpec(guest_agent_ping_paused=True), tcp, factory) == (
        "started by the factory")
    assert made == [ping, tcp]


class LateStarter:
    """Delivers its result `takes` fake seconds later even when cancelled: a result
    racing the cancel, which the prober must recognise as stale."""

    repeatable = None

    def __init__(self, clock: FakeClock, takes: float, outcome: Outcome = F) -> None:
        self.clock, self.takes, self.outcome = clock, takes, outcome
        self.calls: list[float] = []

    def __call__(self, access, on_done):
        self.calls.append(self.clock.now())
        result = ProbeResult(self.outcome, "late", self.takes, 0.0)
        self.clock.call_at(self.clock.now() + self.takes, lambda: on_done(result))
        return lambda: None


@scenario
async def test_a_result_from_before_a_reset_or_a_stop_is_ignored():
    clock = FakeClock()
    starter = LateStarter(clock, 0.5)
    listener = Recorder()
    prober = DomainProber(health(readiness=probe(READY, failure_threshold=1)), Access(),
                          listener, clock=clock, starters=lambda _p: starter)
    prober.start()
    await clock.advance(0.2)
    prober.reset()  # the first run's result arrives at 0.5, in the new run
    await clock.advance(0.2)
    await prober.stop()  # the second's at 0.9, after the stop
    prober.start()
    await clock.advance(0.2)  # the third starts at 0.4 and ends at 0.9
    await clock.advance(1)
    assert starter.calls == [0, 0.2, 0.4, 1.4]
    assert listener.results == [(READY, F, True)]  # the third's only (the fourth ends at 1.9)


@scenario
async def test_stop_waits_a_bounded_time_for_a_run_that_will_not_end(monkeypatch):
    from vmhealth.monitor import prober as prober_module

    monkeypatch.setattr(prober_module, "STOP_TIMEOUT_SECONDS", 0.05)
    stubborn: list[asyncio.Task] = []
    release = asyncio.Event()

    async def ignore_cancel():
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:
                continue

    def start(access, on_done):
        stubborn.append(asyncio.get_running_loop().create_task(ignore_cancel()))
        return lambda: (stubborn[-1].cancel(), stubborn[-1])[1]

    class TaskStarter:
        repeatable = None

        def __call__(self, access, on_done):
            return start(access, on_done)

    clock = FakeClock()
    prober = DomainProber(health(readiness=probe(READY)), Access(), Recorder(), clock=clock,
                          starters=lambda _p: TaskStarter())
    prober.start()
    await clock.advance(0.1)
    assert len(stubborn) == 1
    try:
        await asyncio.wait_for(prober.stop(), 5)  # returns although the task goes on
        assert not stubborn[0].done()
    finally:
        release.set()  # whatever happened, the task ends (or the loop could not close)
    await asyncio.wait_for(stubborn[0], 5)


@scenario
async def test_a_tick_that_comes_while_the_run_is_in_flight_is_ignored():
    # Startup succeeds at 19 (its second run, 10 to 19); readiness, gated until then,
    # had a tick waiting at 20, which comes while readiness' own first run (19 to 28)
    # is in flight.
    h = Harness(health(startup=probe(ProbeKind.STARTUP), readiness=probe(
        READY, period_seconds=10)), {ProbeKind.STARTUP: [F, S], READY: [S]}, takes=9)
    h.prober.start()
    await h.clock.advance(40)
    assert h.script.times(ProbeKind.STARTUP) == [0, 10]
    assert h.script.times(READY) == [19, 29, 39]
    await h.prober.stop()


@scenario
async def test_a_failure_is_not_counted_if_the_guest_was_suppressed_when_it_started():
    h = Harness(health(liveness=probe(LIVE, failure_threshold=1)), {LIVE: [F]}, takes=0.5)
    h.access.suppressed = "migrating"
    h.prober.start()
    await h.clock.advance(0.25)
    h.access.suppressed = None  # over before the result comes
    await h.clock.advance(0.5)
    assert h.listener.results == [(LIVE, F, False)]
    assert h.listener.liveness_failed == []
    await h.prober.stop()


@scenario
async def test_crashes_are_logged_with_the_kind_and_domain_and_probing_goes_on(caplog):
    h = Harness(health(readiness=probe(READY)), {READY: [S]})

    class Flaky(Recorder):
        crashed = False

        def on_result(self, kind, result, *, counted):
            if not self.crashed:
                self.crashed = True
                raise RuntimeError("listener bug")
            super().on_result(kind, result, counted=counted)

    h.prober._listener = h.listener = Flaky()
    h.prober.start()
    await h.clock.advance(1.5)
    assert h.script.times(READY) == [0, 1]  # no retry after the crash: the next tick
    assert [r.getMessage() for r in caplog.records] == [
        "counting probe readiness of web1 failed"]

    def crash(access, on_done):
        raise RuntimeError("starter bug")

    caplog.clear()
    prober = DomainProber(health(readiness=probe(READY)), Access(name="db2"), Recorder(),
                          clock=h.clock, starters=lambda _p: crash)
    prober.start()
    await h.clock.advance(0.5)
    assert [r.getMessage() for r in caplog.records] == ["probe readiness of db2 crashed"]
    await prober.stop()
    await h.prober.stop()


@scenario
async def test_a_reset_by_the_listener_starts_the_new_run_at_once():
    h = Harness(health(liveness=probe(LIVE, failure_threshold=1, period_seconds=5)),
                {LIVE: [F, S]})

    class Restarting(Recorder):
        def on_liveness_failed(self, result):
            super().on_liveness_failed(result)
            h.prober.reset()  # as a restart's new domain run does

    h.prober._listener = h.listener = Restarting()
    h.prober.start()
    await h.clock.advance(6)
    assert h.script.times(LIVE) == [0, 0, 5]  # the new run probes at once, then each period
    await h.prober.stop()


@pytest.mark.parametrize("period,takes,outcome,times", [
    (1, 1.0, S, [0, 1, 2, 3]),  # exactly one period: the next tick is now
    (2, 5, S, [0, 6, 12]),  # ticks missed by a long probe skipped, on the period's grid
    (1, 1.0, E, [0, 1, 2, 3]),  # an ERROR at the period's end: not retried in the next
])
def test_the_schedule_after_a_long_probe(period, takes, outcome, times):
    @scenario
    async def body():
        h = Harness(health(readiness=probe(READY, period_seconds=period)), {READY: [outcome]},
                    takes=takes)
        h.prober.start()
        await h.clock.advance(times[-1] + 0.5)
        assert h.script.times(READY) == times
        await h.prober.stop()
    body()


@scenario
async def test_without_lanes_a_repeatable_probe_stays_in_python():
    clock = FakeClock()
    starter = RepeatableStarter(clock, [S], RECIPE)
    prober = DomainProber(health(readiness=probe(READY)), LaneAccess(), Listener(),
                          clock=clock, starters=lambda _p: starter)
    prober.start()
    await clock.advance(2.5)
    assert starter.calls == [0, 1, 2]
    assert prober.native_kinds() == set()
    prober.fold_lanes()  # nothing to fold
    await prober.stop()


@scenario
async def test_after_a_lane_the_success_threshold_counts_from_the_next_failure():
    run = LaneRun([S, S, F, S, S], success_threshold=2, failure_threshold=3)
    run.prober.start()
    await run.clock.advance(1.5)
    assert list(run.lanes.lanes) == [1]  # S S: settled
    run.clock.t = 2.0
    run.lanes.hand_back(1, DIFFERENT, 2.0)  # probed again: F (one of three)
    await settle()
    assert run.lanes.lanes == {}
    await run.clock.advance(1)  # S: one success, two needed
    assert run.lanes.lanes == {}
    await run.clock.advance(1)  # S S
    assert list(run.lanes.lanes) == [2]
    await run.prober.stop()
