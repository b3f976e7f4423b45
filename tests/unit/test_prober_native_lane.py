"""The prober with the native lane: real handlers, a real engine, loopback servers.

What must hold: a probe moves to the lane only once settled, and only when a
repetition can end exactly as the Python handler would; its successes still reach
the state (consecutive successes, last result) and the metrics; whatever else the
lane sees comes back to the Python handler, which decides with its own message;
a timeout is counted once, without probing again; reset, stop and an address change
take probes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from tests.ci import NO_LANE, require_module
from tests.unit.test_probes import FakeAccess, Route, start_http

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome, StateChange
from vmhealth.monitor.native_lane import NativeLanes
from vmhealth.monitor.prober import DomainProber
from vmhealth.spec import ProbeKind

require_module("vmhealth_fastlane", NO_LANE)

PERIOD = 0.1  # seconds; the spec's type says int, the prober takes any positive number
WAIT = 5.0


@dataclass
class Listener:
    results: list[tuple[ProbeKind, Outcome, bool, str]] = field(default_factory=list)
    repeated: dict[ProbeKind, int] = field(default_factory=dict)
    changes: list[StateChange] = field(default_factory=list)

    def on_result(self, kind, result, *, counted):
        self.results.append((kind, result.outcome, counted, result.message))

    def on_repeated_successes(self, kind, last, count, buckets, seconds):
        assert last.outcome is Outcome.SUCCESS and sum(buckets) == count and seconds > 0
        self.repeated[kind] = self.repeated.get(kind, 0) + count

    def on_state_change(self, change):
        self.changes.append(change)

    def on_liveness_failed(self, result):
        pass


@dataclass
class ExpiringAccess(FakeAccess):
    """Guest addresses that stay valid for `valid_for` seconds from each lookup."""

    valid_for: float = 0.35
    expiries: list[float] = field(default_factory=list)

    def addresses_valid_until(self) -> float:
        self.expiries.append(time.monotonic() + self.valid_for)
        return self.expiries[-1]


def readiness(handler, **timing) -> spec.HealthSpec:
    timing.setdefault("period_seconds", PERIOD)
    timing.setdefault("failure_threshold", 2)
    return spec.HealthSpec(readiness_probe=spec.Probe(handler=handler, **timing))


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class Run:
    """A prober on the native lane against one loopback HTTP server."""

    def __init__(self, lanes, health, access=None) -> None:
        self.lanes = lanes
        self.listener = Listener()
        self.access = access or FakeAccess()
        self.prober = DomainProber(health, self.access, self.listener, lanes=lanes)

    def python_results(self, outcome=None):
        return [r for r in self.listener.results if outcome is None or r[1] is outcome]


@contextlib.asynccontextmanager
async def settled_http(lanes, route: Route, **timing):
    """A readiness httpGet probe against `route`, started and moved to the lane;
    yields (run, server state); stops the prober and the server afterwards."""
    state, server = await start_http({"/": route})
    try:
        run = Run(lanes, readiness(spec.HttpGet(port=state.port, host="127.0.0.1"), **timing))
        run.prober.start()
        await until(lambda: len(lanes) == 1, "the probe to move to the lane")
        yield run, state
        await run.prober.stop()
        assert len(lanes) == 0
    finally:
        server.close()


def with_lanes(test):
    async def body(*args):
        lanes = NativeLanes.start()
        try:
            await test(lanes, *args)
        finally:
            lanes.close()
    return lambda *args: asyncio.run(body(*args))


@with_lanes
async def test_a_settled_probe_moves_to_the_lane_and_its_successes_still_count(lanes):
    async with settled_http(lanes, Route(), success_threshold=2) as (run, state):
        # Python ran it until the success threshold was met, then no more.
        assert [r[1] for r in run.python_results()] == [Outcome.SUCCESS] * 2
        # snapshot() folds the lane's counts in.
        await until(lambda: run.prober.snapshot()[ProbeKind.READINESS]
                    .consecutive_successes >= 2 + 4, "4 successes in the lane")
        snapshot = run.prober.snapshot()[ProbeKind.READINESS]
        assert len(run.python_results()) == 2
        assert snapshot.healthy is True
        assert snapshot.consecutive_successes >= 2 + 4
        assert run.listener.repeated[ProbeKind.READINESS] == snapshot.consecutive_successes - 2
        assert snapshot.last_result.message == f"HTTP 200 from GET http://127.0.0.1:{state.port}/"
        assert len(state.requests) >= snapshot.consecutive_successes  # real requests


@with_lanes
async def test_another_answer_is_probed_again_by_python_and_counted_with_its_message(lanes):
    route = Route()
    async with settled_http(lanes, route) as (run, state):
        route.status, route.body = 500, b"boom"
        await until(lambda: [c.healthy for c in run.listener.changes] == [True, False],
                    "readiness to be lost")
        failures = run.python_results(Outcome.FAILURE)
        assert len(failures) == 2  # failureThreshold, each counted by the prober
        assert all(f[2] and f[3].startswith(f"HTTP 500 from GET http://127.0.0.1:{state.port}/")
                   for f in failures)
        assert len(lanes) == 0  # failing probes stay in Python
        route.status, route.body = 200, b"ok"
        await until(lambda: len(lanes) == 1, "the recovered probe to move back")
        assert [c.healthy for c in run.listener.changes] == [True, False, True]


@with_lanes
async def test_no_answer_in_time_is_one_timeout_failure_without_a_second_request(lanes):
    route = Route()
    async with settled_http(lanes, route, timeout_seconds=0.3, period_seconds=1) as (run, state):
        route.hang = True
        requests_before = len(state.requests)
        await until(lambda: run.python_results(Outcome.FAILURE), "the timeout")
        kind, _outcome, counted, message = run.python_results(Outcome.FAILURE)[0]
        assert counted and message == f"HTTP GET port {state.port}: timed out after 0.3s"
        # The lane's own attempt was the one request of that tick.
        assert len(state.requests) == requests_before + 1


@with_lanes
async def test_reset_and_stop_take_probes_back_and_keep_their_counts(lanes):
    async with settled_http(lanes, Route()) as (run, _state):
        await until(lambda: run.prober.snapshot()[ProbeKind.READINESS]
                    .consecutive_successes >= 1 + 2, "2 successes in the lane")
        run.prober.reset()
        assert len(lanes) == 0
        assert run.listener.repeated.get(ProbeKind.READINESS, 0) >= 2  # metrics keep them
        assert run.prober.snapshot()[ProbeKind.READINESS].consecutive_successes == 0
        await until(lambda: len(lanes) == 1, "the lane again after the reset")
        run.prober.recall_lanes()  # e.g. the guest agent connected: addresses may change
        assert len(lanes) == 0
        await until(lambda: len(lanes) == 1, "the lane again after the recall")


@with_lanes
async def test_stale_guest_addresses_bring_the_probe_back_to_python(lanes):
    state, server = await start_http({"/": Route()})
    try:
        access = ExpiringAccess()
        run = Run(lanes, readiness(spec.HttpGet(port=state.port)), access)
        run.prober.start()
        await until(lambda: len(access.expiries) >= 3, "three offloads")
        # Each expiry brought one probe back to Python, which then handed it over again.
        assert 3 <= len(run.python_results(Outcome.SUCCESS)) <= len(access.expiries) + 1
        assert not run.python_results(Outcome.FAILURE)
        await run.prober.stop()
    finally:
        server.close()


@with_lanes
async def test_what_a_repetition_could_not_reproduce_stays_in_python(lanes):
    routes = {"/": Route(), "/moved": Route(status=302, headers=(("Location", "/"),))}
    state, server = await start_http(routes)
    try:
        runs = [
            # A redirect was followed: the lane would see the 302.
            Run(lanes, readiness(spec.HttpGet(port=state.port, host="127.0.0.1",
                                              path="/moved"))),
            # The first address refused (nothing listens on ::1): the lane would try
            # only that one.
            Run(lanes, readiness(spec.TcpSocket(port=state.port)),
                ExpiringAccess(addrs=["::1", "127.0.0.1"])),
            # Startup probes stop after their first success; they never settle.
            Run(lanes, spec.HealthSpec(startup_probe=spec.Probe(
                handler=spec.TcpSocket(port=state.port, host="127.0.0.1"),
                period_seconds=PERIOD))),
        ]
        for run in runs:
            run.prober.start()
        await until(lambda: len(runs[0].python_results(Outcome.SUCCESS)) >= 3
                    and len(runs[1].python_results(Outcome.SUCCESS)) >= 3
                    and runs[2].prober.snapshot()[ProbeKind.STARTUP].finished,
                    "3 successes of each probe, and the startup probe's end")
        assert len(lanes) == 0
        assert len(runs[0].python_results(Outcome.SUCCESS)) >= 3
        assert len(runs[1].python_results(Outcome.SUCCESS)) >= 3
        assert runs[2].prober.snapshot()[ProbeKind.STARTUP].finished
        for run in runs:
            await run.prober.stop()
    finally:
        server.close()
