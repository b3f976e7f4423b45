"""The prober's test helpers: a fake clock, scripted starters, a harness (a helper
module shared by the prober tests; no tests)."""

from __future__ import annotations

import asyncio
import functools
import heapq
from dataclasses import dataclass, field

from vmhealth import spec
from vmhealth.monitor.interfaces import Outcome, ProbeResult, StateChange
from vmhealth.monitor.prober import DomainProber
from vmhealth.spec import ProbeKind

# Each probe kind on a port of its own, so a scripted starter knows whose run it is.
PORTS = {ProbeKind.LIVENESS: 1, ProbeKind.READINESS: 2, ProbeKind.STARTUP: 3}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class FakeClock:
    """Time moves only when the test says so; callbacks run in time order."""

    def __init__(self) -> None:
        self.t = 0.0
        self._due: list = []
        self._seq = 0

    def now(self) -> float:
        return self.t

    def call_at(self, when: float, callback) -> None:
        heapq.heappush(self._due, (when, self._seq, callback))
        self._seq += 1

    async def advance(self, seconds: float) -> None:
        target = self.t + seconds
        await settle()
        while self._due and self._due[0][0] <= target:
            when, _, callback = heapq.heappop(self._due)
            self.t = max(self.t, when)
            callback()
            await settle()
        self.t = target
        await settle()


class Starter:
    """A ProbeStarter around a plain start function, with nothing to repeat."""

    repeatable = None

    def __init__(self, start) -> None:
        self._start = start

    def __call__(self, access, on_done):
        return self._start(access, on_done)


@dataclass
class Script:
    """Probe results by kind: each run takes the next outcome; the last one repeats.

    A starter factory (see vmhealth.monitor.probes): results arrive through the
    callback `takes` fake seconds after the start, or on the next loop turn.
    """

    clock: FakeClock
    outcomes: dict[ProbeKind, list[Outcome]]
    calls: list[tuple[ProbeKind, float]] = field(default_factory=list)
    takes: float = 0.0  # how long each probe runs, in fake seconds
    cancelled: int = 0

    def __call__(self, probe: spec.Probe):
        kind = next(k for k, port in PORTS.items() if probe.handler.port == port)

        def start(access, on_done):
            self.calls.append((kind, self.clock.now()))
            started = self.clock.now()
            queue = self.outcomes[kind]
            outcome = queue.pop(0) if len(queue) > 1 else queue[0]
            result = ProbeResult(outcome, f"{kind.short} {outcome.value}", self.takes, started)
            live = [True]

            def deliver():
                if live[0]:
                    live[0] = False
                    on_done(result)

            if self.takes:
                self.clock.call_at(started + self.takes, deliver)
            else:
                asyncio.get_running_loop().call_soon(deliver)

            def cancel():
                if live[0]:
                    live[0] = False
                    self.cancelled += 1

            return cancel

        return Starter(start)

    def times(self, kind: ProbeKind) -> list[float]:
        return [t for k, t in self.calls if k is kind]


@dataclass
class Recorder:
    results: list[tuple[ProbeKind, Outcome, bool]] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)
    liveness_failed: list[ProbeResult] = field(default_factory=list)

    def on_result(self, kind, result, *, counted):
        self.results.append((kind, result.outcome, counted))

    def on_state_change(self, change):
        self.changes.append(change)

    def on_liveness_failed(self, result):
        self.liveness_failed.append(result)

    def flips(self, kind):
        return [c.healthy for c in self.changes if c.kind is kind]


@dataclass
class Access:
    name: str = "web1"
    suppressed: str | None = None

    async def addresses(self):
        return ["192.0.2.1"]

    async def agent_command(self, command, timeout):
        raise AssertionError("not used: probes are scripted")

    def suppression_reason(self):
        return self.suppressed


def probe(kind: ProbeKind, **timing) -> spec.Probe:
    timing.setdefault("period_seconds", 1)
    return spec.Probe(handler=spec.TcpSocket(port=PORTS[kind]), **timing)


def health(**probes: spec.Probe) -> spec.HealthSpec:
    return spec.HealthSpec(**{f"{name}_probe": p for name, p in probes.items()})


class Harness:
    def __init__(self, spec_: spec.HealthSpec, outcomes, *, rng=None, takes=0.0):
        self.clock = FakeClock()
        self.script = Script(self.clock, outcomes, takes=takes)
        self.listener = Recorder()
        self.access = Access()
        self.prober = DomainProber(spec_, self.access, self.listener, clock=self.clock,
                                   rng=rng, starters=self.script)


def scenario(test):
    """Run an async test body in a fresh event loop."""
    @functools.wraps(test)  # keeps the signature: pytest still hands out fixtures
    def wrapper(*args, **kwargs):
        asyncio.run(test(*args, **kwargs))
    return wrapper
