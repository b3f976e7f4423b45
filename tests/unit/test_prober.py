"""The per-domain state machine, on a fake clock with scripted probe results."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from tests.unit.prober_support import (
    Access,
    FakeClock,
    Harness,
    Recorder,
    Script,
    Starter,
    health,
    probe,
    scenario,
    settle,
)

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.prober import DomainProber
from vmhealth.spec import ProbeKind

S, F, E = Outcome.SUCCESS, Outcome.FAILURE, Outcome.ERROR


@scenario
async def test_initial_states_before_any_probe():
    h = Harness(health(liveness=probe(ProbeKind.LIVENESS), readiness=probe(
        ProbeKind.READINESS), startup=probe(ProbeKind.STARTUP)), {})
    snap = h.prober.snapshot()
    assert snap[ProbeKind.READINESS].healthy is False
    assert snap[ProbeKind.LIVENESS].healthy is True
    assert snap[ProbeKind.STARTUP].healthy is None
    assert snap[ProbeKind.READINESS].waiting_for_startup
    assert not h.listener.changes


@scenario
async def test_probes_run_every_period_after_the_initial_delay():
    h = Harness(health(readiness=probe(ProbeKind.READINESS, initial_delay_seconds=5,
                                       period_seconds=2)), {ProbeKind.READINESS: [S]})
    h.prober.start()
    await h.clock.advance(10.5)
    assert h.script.times(ProbeKind.READINESS) == [5, 7, 9]
    await h.prober.stop()


@scenario
async def test_adopted_domain_counts_its_age_against_the_initial_delay():
    h = Harness(health(readiness=probe(ProbeKind.READINESS, initial_delay_seconds=10)),
                {ProbeKind.READINESS: [S]})
    h.prober.start(run_age_seconds=4)
    await h.clock.advance(6.5)
    assert h.script.times(ProbeKind.READINESS) == [6]
    await h.prober.stop()


@scenario
async def test_readiness_needs_success_threshold_in_a_row_and_publishes_once():
    h = Harness(health(readiness=probe(ProbeKind.READINESS, success_threshold=2)),
                {ProbeKind.READINESS: [S, F, S, S, S, S]})
    h.prober.start()
    await h.clock.advance(2.5)  # S F S: no run of two yet
    assert h.listener.flips(ProbeKind.READINESS) == []
    await h.clock.advance(3)
    assert h.listener.flips(ProbeKind.READINESS) == [True]  # published only on the change
    snap = h.prober.snapshot()[ProbeKind.READINESS]
    assert snap.healthy is True and snap.consecutive_successes == 4
    await h.prober.stop()


@scenario
async def test_readiness_lost_after_failure_threshold():
    h = Harness(health(readiness=probe(ProbeKind.READINESS, failure_threshold=3)),
                {ProbeKind.READINESS: [S, F, F, S, F, F, F]})
    h.prober.start()
    await h.clock.advance(5.5)
    assert h.listener.flips(ProbeKind.READINESS) == [True]  # F F S broke the run
    await h.clock.advance(1)
    assert h.listener.flips(ProbeKind.READINESS) == [True, False]
    assert "3 consecutive failures" in h.listener.changes[-1].reason
    assert h.prober.snapshot()[ProbeKind.READINESS].consecutive_failures == 3
    await h.prober.stop()


@scenario
async def test_liveness_acts_at_each_threshold_and_is_never_switched_off():
    """An action that was skipped, failed or is `none` leaves the domain in this run:
    liveness goes on probing, acts again after failureThreshold more failures, and
    recovers when the guest does (issue: a held liveness never acted again)."""
    h = Harness(health(liveness=probe(ProbeKind.LIVENESS, failure_threshold=2)),
                {ProbeKind.LIVENESS: [F]})
    h.prober.start()
    await h.clock.advance(5.5)
    assert h.script.times(ProbeKind.LIVENESS) == [0, 1, 2, 3, 4, 5]  # never held
    assert len(h.listener.liveness_failed) == 3  # at failures 2, 4 and 6
    assert h.listener.flips(ProbeKind.LIVENESS) == [False]
    snap = h.prober.snapshot()[ProbeKind.LIVENESS]
    assert snap.healthy is False

    h.script.outcomes[ProbeKind.LIVENESS] = [S]  # the guest recovers by itself
    await h.clock.advance(1)
    assert h.listener.flips(ProbeKind.LIVENESS) == [False, True]

    h.script.outcomes[ProbeKind.LIVENESS] = [F, S]
    h.prober.reset()  # the domain was restarted: a new run
    await settle()
    await h.clock.advance(2.5)
    assert len(h.listener.liveness_failed) == 3  # one F after reset: counters started over
    await h.prober.stop()


@scenario
async def test_a_skipped_probe_is_neither_counted_nor_retried():
    K = Outcome.SKIPPED
    h = Harness(health(liveness=probe(ProbeKind.LIVENESS, failure_threshold=2)),
                {ProbeKind.LIVENESS: [F, K, K, F, S]})
    h.prober.start()
    await h.clock.advance(2.5)
    assert h.script.times(ProbeKind.LIVENESS) == [0, 1, 2]  # one run per tick, no retry
    assert (ProbeKind.LIVENESS, K, False) in h.listener.results
    await h.clock.advance(1)
    # F K K F: the skips broke nothing and counted nothing: two failures in a row.
    assert len(h.listener.liveness_failed) == 1
    await h.prober.stop()


@scenario
async def test_readiness_runs_at_once_when_startup_succeeds():
    h = Harness(health(startup=probe(ProbeKind.STARTUP, period_seconds=1),
                       readiness=probe(ProbeKind.READINESS, period_seconds=10)),
                {ProbeKind.STARTUP: [F, S], ProbeKind.READINESS: [S]})
    h.prober.start()
    await h.clock.advance(1.5)
    assert h.script.times(ProbeKind.STARTUP) == [0, 1]
    assert h.script.times(ProbeKind.READINESS) == [1]  # not at 10: at once, as kubelet
    await h.clock.advance(12)
    assert h.script.times(ProbeKind.READINESS) == [1, 11]  # then every period from there
    await h.prober.stop()


@scenario
async def test_startup_gates_the_others_and_stops_after_success():
    h = Harness(health(startup=probe(ProbeKind.STARTUP, failure_threshold=5),
                       liveness=probe(ProbeKind.LIVENESS),
                       readiness=probe(ProbeKind.READINESS)),
                {ProbeKind.STARTUP: [F, F, S], ProbeKind.LIVENESS: [S],
                 ProbeKind.READINESS: [S]})
    h.prober.start()
    await h.clock.advance(1.5)
    assert h.script.times(ProbeKind.LIVENESS) == []
    assert h.script.times(ProbeKind.READINESS) == []
    await h.clock.advance(3)
    assert h.script.times(ProbeKind.STARTUP) == [0, 1, 2]  # stopped after its success
    assert h.script.times(ProbeKind.LIVENESS)[0] >= 2
    assert h.script.times(ProbeKind.READINESS)[0] >= 2
    assert h.listener.flips(ProbeKind.STARTUP) == [True]
    assert h.prober.snapshot()[ProbeKind.STARTUP].finished
    await h.prober.stop()


@scenario
async def test_startup_failure_takes_the_liveness_action():
    h = Harness(health(startup=probe(ProbeKind.STARTUP, failure_threshold=3),
                       liveness=probe(ProbeKind.LIVENESS)),
                {ProbeKind.STARTUP: [F], ProbeKind.LIVENESS: [S]})
    h.prober.start()
    await h.clock.advance(8.5)
    assert len(h.listener.liveness_failed) == 3  # every failureThreshold failures
    assert h.script.times(ProbeKind.STARTUP) == list(range(9))  # never switched off
    assert h.script.times(ProbeKind.LIVENESS) == []  # still gated
    await h.prober.stop()


@scenario
async def test_failures_not_counted_while_suppressed():
    h = Harness(health(liveness=probe(ProbeKind.LIVENESS, failure_threshold=2)),
                {ProbeKind.LIVENESS: [F]})
    h.access.suppressed = "paused by the user"
    h.prober.start()
    await h.clock.advance(5.5)
    assert h.listener.liveness_failed == []
    assert h.listener.results[0] == (ProbeKind.LIVENESS, F, False)
    assert h.prober.snapshot()[ProbeKind.LIVENESS].consecutive_failures == 0
    h.access.suppressed = None
    await h.clock.advance(2)
    assert len(h.listener.liveness_failed) == 1
    await h.prober.stop()


@scenario
async def test_errors_retried_three_times_and_never_counted():
    h = Harness(health(readiness=probe(ProbeKind.READINESS, failure_threshold=1)),
                {ProbeKind.READINESS: [E]})
    h.prober.start()
    await h.clock.advance(1.5)
    assert h.script.times(ProbeKind.READINESS) == [0, 0, 0, 1, 1, 1]
    assert all(not counted for _, _, counted in h.listener.results)
    assert h.listener.changes == []
    assert h.prober.snapshot()[ProbeKind.READINESS].last_result.outcome is E
    await h.prober.stop()


@scenario
async def test_error_then_success_in_the_same_period_counts_the_success():
    h = Harness(health(readiness=probe(ProbeKind.READINESS)), {ProbeKind.READINESS: [E, S]})
    h.prober.start()
    await h.clock.advance(0.5)
    assert h.script.times(ProbeKind.READINESS) == [0, 0]
    assert h.listener.flips(ProbeKind.READINESS) == [True]
    await h.prober.stop()


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999])
def test_first_probe_jitter_within_one_period(draw):
    class FixedRng(random.Random):
        def random(self):
            return draw

    @scenario
    async def body():
        h = Harness(health(readiness=probe(ProbeKind.READINESS, period_seconds=4)),
                    {ProbeKind.READINESS: [S]}, rng=FixedRng())
        h.prober.start(jitter_first_probe=True)
        await h.clock.advance(9)
        times = h.script.times(ProbeKind.READINESS)
        assert times[0] == pytest.approx(draw * 4)
        assert 0 <= times[0] < 4
        assert times[1] == pytest.approx(times[0] + 4)
        await h.prober.stop()
    body()


@scenario
async def test_seeded_jitter_spreads_first_probes_over_the_period():
    firsts = []
    for seed in range(20):
        h = Harness(health(readiness=probe(ProbeKind.READINESS, period_seconds=10)),
                    {ProbeKind.READINESS: [S]}, rng=random.Random(seed))
        h.prober.start(jitter_first_probe=True)
        await h.clock.advance(10)
        firsts.append(h.script.times(ProbeKind.READINESS)[0])
        await h.prober.stop()
    assert all(0 <= t < 10 for t in firsts)
    assert len(set(firsts)) > 10


@scenario
async def test_a_probe_longer_than_its_period_skips_the_missed_ticks():
    h = Harness(health(readiness=probe(ProbeKind.READINESS)), {ProbeKind.READINESS: [S]},
                takes=2.5)
    h.prober.start()
    await h.clock.advance(7)
    assert h.script.times(ProbeKind.READINESS) == [0, 3, 6]
    await h.prober.stop()


@scenario
async def test_stop_ends_probing_and_start_twice_is_refused():
    h = Harness(health(readiness=probe(ProbeKind.READINESS)), {ProbeKind.READINESS: [S]})
    h.prober.start()
    with pytest.raises(RuntimeError):
        h.prober.start()
    await h.clock.advance(1.5)
    await h.prober.stop()
    assert not h.prober.running
    await h.clock.advance(5)
    assert h.script.times(ProbeKind.READINESS) == [0, 1]


@scenario
async def test_stop_and_reset_cancel_the_run_in_flight_and_ignore_its_result():
    h = Harness(health(readiness=probe(ProbeKind.READINESS)), {ProbeKind.READINESS: [S]},
                takes=0.5)
    h.prober.start()
    await h.clock.advance(0.2)  # the first run is in flight
    h.prober.reset()
    assert h.script.cancelled == 1
    await h.clock.advance(0.2)  # the new run is in flight
    await h.prober.stop()
    assert h.script.cancelled == 2
    await h.clock.advance(3)
    assert h.listener.results == []  # neither run reported
    assert h.script.times(ProbeKind.READINESS) == [0, 0.2]


@scenario
async def test_a_starter_that_raises_is_logged_and_probing_goes_on(caplog):
    clock = FakeClock()
    script = Script(clock, {ProbeKind.READINESS: [S]})
    starts = []

    def flaky(probe_):
        start = script(probe_)

        def maybe_crash(access, on_done):
            starts.append(clock.now())
            if len(starts) == 1:
                raise RuntimeError("bug")
            return start(access, on_done)

        return Starter(maybe_crash)

    listener = Recorder()
    prober = DomainProber(health(readiness=probe(ProbeKind.READINESS)), Access(), listener,
                          clock=clock, starters=flaky)
    prober.start()
    await clock.advance(1.5)
    assert starts == [0, 1]  # the next tick ran as usual
    assert listener.flips(ProbeKind.READINESS) == [True]
    assert "crashed" in caplog.text
    await prober.stop()


@scenario
async def test_a_coroutine_handler_that_crashes_is_an_error_not_counted(caplog):
    from vmhealth.monitor.probes import TaskStarter

    calls = []

    async def crash_once(probe_, access):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return ProbeResult(S, "ok", 0.0, 0.0)

    clock = FakeClock()
    listener = Recorder()
    prober = DomainProber(health(readiness=probe(ProbeKind.READINESS)), Access(), listener,
                          clock=clock, starters=lambda p: TaskStarter(p, crash_once))
    prober.start()
    await clock.advance(0.5)
    # The crash came back as an ERROR (not counted) and was retried within the period.
    assert listener.results == [(ProbeKind.READINESS, E, False), (ProbeKind.READINESS, S, True)]
    assert "failed inside vmhealth" in caplog.text
    assert "RuntimeError: bug" in caplog.text
    await prober.stop()


# ---------------------------------------------------------------------------
# LoopClock: the real clock's shared wake-up slots
# ---------------------------------------------------------------------------

def test_loop_clock_runs_a_slot_with_one_timer_never_early():
    from vmhealth.monitor.coarse_timers import CoarseTimers
    from vmhealth.monitor.prober import LoopClock

    clock = LoopClock(CoarseTimers(0.05))

    async def scenario():
        loop = asyncio.get_running_loop()
        # Just past a slot boundary, so all three times share one 50 ms slot.
        due = (math.ceil(loop.time() / 0.05) + 1) * 0.05 + 0.01
        timers = []
        real_call_at = loop.call_at

        def counting_call_at(when, callback, *args, **kwargs):
            timers.append(when)
            return real_call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        ran = []
        all_ran = loop.create_future()
        for name, offset in (("a", 0.0), ("b", 0.001), ("c", 0.002)):
            def callback(name=name):
                ran.append((name, loop.time()))
                if len(ran) == 3:
                    all_ran.set_result(None)
            clock.call_at(due + offset, callback)
        await asyncio.wait_for(all_ran, 5)
        return timers, ran, due

    timers, ran, due = asyncio.run(scenario())
    assert len([t for t in timers if t < due + 1]) == 1  # three callbacks, one slot, one timer
    assert [name for name, _ in ran] == ["a", "b", "c"]
    assert all(at >= due + 0.002 for _, at in ran)
    # The same clock serves a new event loop (each asyncio.run is one).
    assert [name for name, _ in asyncio.run(scenario())[1]] == ["a", "b", "c"]


def test_coarse_timers_forget_drops_what_waits_for_a_stopping_loop():
    """The daemon's last step before its loop closes: nothing on the grid may keep
    what it refers to (probers, domain handles) alive past the loop."""
    import gc
    import weakref

    from vmhealth.monitor.coarse_timers import CoarseTimers

    timers = CoarseTimers(0.05)

    class Held:
        def tick(self):
            raise AssertionError("a forgotten callback ran")

    async def scenario():
        loop = asyncio.get_running_loop()
        held = Held()
        timers.call_at(loop, loop.time() + 0.05, held.tick)
        ref = weakref.ref(held)
        del held
        timers.forget(loop)
        gc.collect()
        await asyncio.sleep(0.15)  # past the slot: its loop timer finds nothing to run
        return ref

    assert asyncio.run(scenario())() is None


@scenario
async def test_paused_guest_agent_ping_probes_are_skipped_never_counted():
    from vmhealth.monitor.probes import PausedStarter
    health_ = spec.HealthSpec(liveness_probe=spec.Probe(handler=spec.GuestAgentPing(),
                                                        period_seconds=1,
                                                        failure_threshold=1),
                              guest_agent_ping_paused=True)
    h = Harness(health(liveness=probe(ProbeKind.LIVENESS)), {ProbeKind.LIVENESS: [F]})
    prober = DomainProber(health_, h.access, h.listener, clock=h.clock,
                          starters=h.script)
    prober.start()
    await h.clock.advance(3.5)
    assert h.script.calls == []  # the scripted (failing) handler never ran
    assert h.listener.liveness_failed == []
    assert {(k, o, c) for k, o, c in h.listener.results} == {
        (ProbeKind.LIVENESS, Outcome.SKIPPED, False)}
    assert prober.snapshot()[ProbeKind.LIVENESS].last_result.message == PausedStarter.MESSAGE
    await prober.stop()
