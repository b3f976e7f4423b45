"""Probe engine at scale: 1,000 domains, HTTP readiness + TCP liveness, periodSeconds 1.

    .venv/bin/python benchmarks/bench_probes.py [--domains 1000] [--seconds 30]
                                                [--rounds 3] [--loop asyncio|uvloop]

Each domain also has a guestAgentPing startup probe answered by a fake agent, so
startup gating is part of the run. Each domain's GuestAccess is the daemon's own
(LibvirtGuestAccess) with only libvirt faked (FakeGuest): its addresses expire every
address_refresh_seconds (30 s), a look-up runs in the background while the stale ones
are probed, and the native lane hands its probes back to Python when they expire
(at 1,000 domains: ~33 look-ups a second; 2026-12-04, each probe then ran twice in
Python per refresh, ~133 a second). The guests start together, as on a daemon's
start, so their addresses expire together, once a period; the measured window is one
period long (30 s), so it holds one refresh of every guest. Every domain reports to
the daemon's own listener (DomainMonitor: status, events, Prometheus metrics). The
targets are served on 127.0.0.1 by a separate process (benchmarks/loopback_targets.py);
each phase runs in a fresh child process, so its CPU (getrusage) and RSS are the
daemon-side figures. Four phases, each after a warm-up, repeated in interleaved
rounds (the machine is shared and noisy: the median run of each phase is reported,
with the range of its CPU figures):

- baseline: the same DomainProbers with no-op probes (scheduling only);
- floor: no vmhealth code at all: the same connections at the same rate (1,000 HTTP
  GETs and 1,000 TCP connects a second) made by the leanest code known
  (floor_probing.py), with no state, results or metrics: what the kernel and the
  event loop alone cost;
- python: the real handlers and state machine, every probe in Python (the daemon
  with `native_lane = no`);
- probes: the daemon as it ships (`native_lane = yes`): the same, with settled probes
  repeated by the native lane (vmhealth_fastlane) and their successes folded in
  at the end of the window, as a /metrics scrape would.

Lateness is measured from outside the daemon, the same way for both engines: each
domain's readiness probe asks for a path of its own (/healthz/<uuid>), the target
process notes when each such connection arrived (loopback_targets.py, time.monotonic(),
the event loop's clock), and each arrival is compared with its probe's schedule. That
schedule is what the prober documents (docs/probes.md): the readiness probe is
gated by the startup probe, probed at once when startup succeeds, then every
periodSeconds (1 s) from there, a schedule the native lane keeps when it repeats the
probe. The moment startup succeeded is what the domain's listener sees (its startup
success, read on the loop's clock); the readiness probe's initialDelaySeconds (3 s)
keeps its first gated tick after that moment, so the schedule has no other anchor.
An arrival belongs to the latest tick at or before it: lateness = arrival - that tick,
exact (no buckets, no cap), including the connect to the target and the target's own
accept. Ticks in the window with no arrival are counted as missed (a probe more than a
period late, or skipped). The TCP liveness probes carry no path and are not timed;
`baseline` makes no connections and `floor` keeps no schedule per domain, so neither
has a lateness.

Targets: daemon CPU < 15% of one core, RSS < 120 MB, p99 lateness < 50 ms.
The machine has 2 cores shared with the target server, so figures include that
contention.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from floor_probing import FloorProbing

from vmhealth import spec
from vmhealth.monitor.coarse_timers import CoarseTimers
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.native_lane import NativeLanes
from vmhealth.monitor.prober import DomainProber, LoopClock
from vmhealth.monitor.probes import starter_for
from vmhealth.spec import ProbeKind

TARGETS = {"cpu_percent": 15.0, "rss_mb": 120.0, "p99_ms": 50.0}
HERE = Path(__file__).resolve().parent
PERIOD_SECONDS = 1
# The readiness probe's first gated tick comes after startup has surely succeeded, so
# startup's success alone anchors its schedule (see the module docstring).
READINESS_DELAY_SECONDS = 3


class FakeDomain:
    """Just enough of a libvirt.virDomain for LibvirtGuestAccess's constructor."""

    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class GuestPools:
    """The daemon's two thread pools, sized as its defaults (DaemonConfig)."""

    def __init__(self) -> None:
        config = DaemonConfig()
        self.agent = ThreadPoolExecutor(config.agent_threads, "vmhealth-agent")
        self.control = ThreadPoolExecutor(config.control_threads, "vmhealth-libvirt")
        self.refresh_seconds = config.address_refresh_seconds

    def close(self) -> None:
        self.agent.shutdown(wait=False)
        self.control.shutdown(wait=False)


def _host_view() -> tuple[list, list, list]:
    return [], [], []  # in a pool thread, as read_host_view: NICs, leases, ARP


def _agent_interfaces() -> str:
    return '{"return": []}'  # in a pool thread, as qemuAgentCommand


class FakeGuest(LibvirtGuestAccess):
    """The daemon's own GuestAccess with libvirt taken out, for one simulated domain.

    Its address cache is the daemon's: addresses valid for address_refresh_seconds;
    then a probe that finds them stale gets them at once while a look-up runs in the
    background, and the native lane hands its probes back to Python when they expire.
    Only the look-up itself is fake (two thread-pool hops, as the daemon's host view and
    agent call, then the loopback address), so it happens on the daemon's schedule
    without libvirt. The agent answers every command; nothing is ever suppressed.
    """

    def __init__(self, name: str, pools: GuestPools, tally: Tally) -> None:
        super().__init__(FakeDomain(name), agent_pool=pools.agent,
                         control_pool=pools.control,
                         address_refresh_seconds=pools.refresh_seconds)
        self._tally = tally

    async def _look_up_addresses(self) -> list[str]:
        self._tally.look_up()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._control_pool, _host_view)
        await loop.run_in_executor(self._agent_pool, _agent_interfaces)
        return ["127.0.0.1"]

    async def agent_command(self, command, timeout):
        return {}

    def suppression_reason(self):
        return None


class Tally:
    """Outcome counts, only inside the measured window; when each domain's startup
    probe succeeded (loop time), always."""

    def __init__(self) -> None:
        self.measuring = False
        self.outcomes: dict[str, int] = {}
        self.failures: list[str] = []
        self.started: dict[str, float] = {}  # uuid -> when its startup probe succeeded
        self.python_runs = 0  # probes run by the Python handlers (not the native lane)
        self.look_ups = 0  # address look-ups (FakeGuest)

    def look_up(self) -> None:
        if self.measuring:
            self.look_ups += 1

    def count_many(self, kind, count) -> None:
        if self.measuring:
            key = (kind, Outcome.SUCCESS)
            self.outcomes[key] = self.outcomes.get(key, 0) + count

    def count(self, kind, result) -> None:
        if self.measuring:  # a tuple key: no string formatting inside the measured window
            key = (kind, result.outcome)
            self.outcomes[key] = self.outcomes.get(key, 0) + 1
            self.python_runs += 1
            if result.outcome is not Outcome.SUCCESS and len(self.failures) < 5:
                self.failures.append(result.message)


class CountingMonitor(DomainMonitor):
    """The daemon's own ProbeListener, also counting for the report."""

    def __init__(self, tally: Tally, uuid: str, health: spec.HealthSpec, access,
                 events: EventLog, metrics: Metrics) -> None:
        super().__init__(uuid, 1, health, access, events=events, metrics=metrics,
                         on_liveness_failed=lambda monitor, result: None)
        self.tally = tally

    def on_result(self, kind, result, *, counted):
        super().on_result(kind, result, counted=counted)
        self.tally.count(kind, result)
        if (kind is ProbeKind.STARTUP and counted and result.outcome is Outcome.SUCCESS
                and self.uuid not in self.tally.started):
            # The prober probes the gated kinds at once, on the same loop clock.
            self.tally.started[self.uuid] = asyncio.get_running_loop().time()

    def on_repeated_successes(self, kind, last, count, buckets, seconds):
        super().on_repeated_successes(kind, last, count, buckets, seconds)
        self.tally.count_many(kind, count)


class NoopStarter:
    """A probe that does nothing: each run succeeds on the next turn of the event loop."""

    repeatable = None  # nothing for the native lane to repeat

    def __call__(self, access, on_done):
        asyncio.get_running_loop().call_soon(
            on_done, ProbeResult(Outcome.SUCCESS, "no-op", 0.0, time.time()))
        return lambda: None


def noop_starters(probe):
    return NoopStarter()


def readiness_path(uuid: str) -> str:
    return f"/healthz/{uuid}"


def domain_spec(port: int, path: str = "/healthz") -> spec.HealthSpec:
    return spec.HealthSpec(
        startup_probe=spec.Probe(handler=spec.GuestAgentPing(), period_seconds=PERIOD_SECONDS),
        readiness_probe=spec.Probe(handler=spec.HttpGet(port=port, path=path),
                                   initial_delay_seconds=READINESS_DELAY_SECONDS,
                                   period_seconds=PERIOD_SECONDS),
        liveness_probe=spec.Probe(handler=spec.TcpSocket(port=port),
                                  period_seconds=PERIOD_SECONDS),
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_phase(phase: str, ports: list[int], domains: int, warmup: float,
                    seconds: float, grain: float) -> dict:
    tally = Tally()
    if phase == "floor":
        floor = FloorProbing(ports, domains, tally)
        floor.start()
        return await measure(phase, tally, warmup, seconds, floor.stop, None)
    starters = noop_starters if phase == "baseline" else starter_for
    lanes = NativeLanes.start() if phase == "probes" else None
    if phase == "probes" and lanes is None:
        raise SystemExit("vmhealth_fastlane is not installed (pip install ./src/native)")
    events, metrics, pools = EventLog(), Metrics(), GuestPools()
    # One grid for all, as in the daemon.
    probers, clock = [], LoopClock(CoarseTimers(grain))
    for i in range(domains):
        uuid = f"uuid-{i}"
        health = domain_spec(ports[i % len(ports)], readiness_path(uuid))
        access = FakeGuest(f"vm{i}", pools, tally)
        monitor = CountingMonitor(tally, uuid, health, access, events, metrics)
        prober = DomainProber(health, access, monitor, starters=starters,
                              clock=clock, lanes=lanes)
        monitor.attach(prober)
        probers.append(prober)
    launched = asyncio.get_running_loop().time()  # no later than any prober's start
    for prober in probers:
        prober.start(jitter_first_probe=True)  # a fresh daemon start

    async def stop():
        await asyncio.gather(*(prober.stop() for prober in probers))
        if lanes is not None:
            lanes.close()
        pools.close()

    schedule = (Schedule(ports[0], tally, [f"uuid-{i}" for i in range(domains)], launched)
                if phase != "baseline" else None)
    return await measure(phase, tally, warmup, seconds, stop, schedule, lanes)


async def ask_target(port: int, path: bytes) -> bytes:
    """One control request to loopback_targets.py; its answer's body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Connection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"loopback_targets.py answered {head[:80]!r} to {path!r}")
    return body


class Schedule:
    """Each readiness probe's ticks against its arrivals at the targets (see the module
    docstring): anchored where the domain's startup probe succeeded, one tick every
    PERIOD_SECONDS."""

    def __init__(self, control_port: int, tally: Tally, uuids: list[str],
                 launched: float) -> None:
        self.control_port, self.tally, self.launched = control_port, tally, launched
        self.uuids = uuids

    async def record(self) -> None:
        await ask_target(self.control_port, b"/_arrivals/start")

    async def lateness(self, start: float, end: float) -> dict:
        """Lateness of the ticks in [start, end), with the arrivals taken now."""
        taken = json.loads(await ask_target(self.control_port, b"/_arrivals/take"))
        late: list[float] = []
        missed = unanchored = 0
        for uuid in self.uuids:
            anchor = self.tally.started.get(uuid, math.inf)
            if anchor >= self.launched + READINESS_DELAY_SECONDS:
                # Startup not passed, or too late to be sure its first gated tick did not
                # come first: this domain's readiness probe is not timed.
                unanchored += 1
                continue
            first = max(0, math.ceil((start - anchor) / PERIOD_SECONDS))
            last = math.ceil((end - anchor) / PERIOD_SECONDS)  # exclusive
            earliest: dict[int, float] = {}
            for arrival in taken["arrivals"].get(readiness_path(uuid), ()):
                tick = math.floor((arrival - anchor) / PERIOD_SECONDS)
                if first <= tick < last and arrival < earliest.get(tick, math.inf):
                    earliest[tick] = arrival
            missed += (last - first) - len(earliest)
            late.extend(arrival - (anchor + tick * PERIOD_SECONDS)
                        for tick, arrival in earliest.items())
        late.sort()
        return {
            "timed": len(late), "missed": missed, "unanchored": unanchored,
            "dropped": taken["dropped"],
            "p50_ms": 1000 * statistics.median(late) if late else None,
            # nearest rank: the smallest value with at least 99% of them at or below it
            "p99_ms": 1000 * late[math.ceil(0.99 * len(late)) - 1] if late else None,
            "max_ms": 1000 * late[-1] if late else None,
        }


def ms_text(value: float | None, width: int = 7) -> str:
    return f"{'-' if value is None else f'{value:.2f}':>{width}}"


async def measure(phase: str, tally: Tally, warmup: float, seconds: float, stop,
                  schedule: Schedule | None, lanes: NativeLanes | None = None) -> dict:
    await asyncio.sleep(warmup)
    if lanes is not None:  # what the lanes counted during the warm-up is not measured
        lanes.fold_all()
    if schedule is not None:
        await schedule.record()
    tally.measuring = True
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(seconds)
    if lanes is not None:
        lanes.fold_all()  # inside the window: a /metrics scrape would pay it too
    cpu1, wall1 = cpu_seconds(), time.monotonic()
    tally.measuring = False
    rss = psutil.Process().memory_info().rss
    offloaded = len(lanes) if lanes is not None else 0
    lateness = {"p50_ms": None, "p99_ms": None, "max_ms": None, "timed": 0, "missed": 0,
                "unanchored": 0, "dropped": 0}
    if schedule is not None:
        await asyncio.sleep(2 * PERIOD_SECONDS)  # the window's last ticks reach the target
        lateness = await schedule.lateness(wall0, wall1)
    await stop()
    return {
        "phase": phase,
        "offloaded": offloaded,
        "cpu_percent": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "rss_mb": rss / 2**20,
        **lateness,
        "probes_per_second": sum(tally.outcomes.values()) / (wall1 - wall0),
        "python_runs_per_second": tally.python_runs / (wall1 - wall0),
        "look_ups_per_second": tally.look_ups / (wall1 - wall0),
        "outcomes": {key if isinstance(key, str) else f"{key[0].short}:{key[1].value}": runs
                     for key, runs in tally.outcomes.items()},
        "sample_failures": tally.failures,
    }


def phase_child(phase, ports, domains, warmup, seconds, loop_name, grain, out) -> None:
    if loop_name == "uvloop":
        import uvloop
        uvloop.install()
    out.put(asyncio.run(run_phase(phase, ports, domains, warmup, seconds, grain)))


def run_in_child(*args) -> dict:
    context = multiprocessing.get_context("spawn")  # a clean process: honest RSS
    out = context.Queue()
    child = context.Process(target=phase_child, args=(*args, out))
    child.start()
    result = out.get(timeout=600)
    child.join(timeout=30)
    return result


@contextlib.contextmanager
def serving_targets(max_seconds: float) -> Iterator[list[int]]:
    """loopback_targets.py in its own process, for at most max_seconds; yields its ports."""
    server = subprocess.Popen(
        [sys.executable, str(HERE / "loopback_targets.py"), "--max-seconds",
         str(max_seconds)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield json.loads(server.stdout.readline())["ports"]
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def median_run(phase_runs: list[dict]) -> dict:
    """The run with the median CPU (the lower middle one of an even count)."""
    ordered = sorted(phase_runs, key=lambda run: run["cpu_percent"])
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=1000)
    # One address refresh period: every guest's addresses expire once in the window.
    parser.add_argument("--seconds", type=float,
                        default=DaemonConfig().address_refresh_seconds,
                        help="measured window per phase (default: address_refresh_seconds)")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the four phases, interleaved; the median is shown")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--grain", type=float, default=0.005,
                        help="wake-up grid of probe starts, in seconds (> 0)")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"baseline": [], "floor": [], "python": [], "probes": []}
    with serving_targets(5 * args.rounds * (args.seconds + args.warmup) + 60) as ports:
        common = (ports, args.domains, args.warmup, args.seconds, args.loop, args.grain)
        load_before = os.getloadavg()[0]
        for _ in range(args.rounds):  # interleaved, so a noisy minute hits every phase
            for phase, phase_runs in runs.items():
                phase_runs.append(run_in_child(phase, *common))
    baseline, floor, python, probes = (median_run(phase_runs) for phase_runs in runs.values())

    print(f"{args.domains} domains x (HTTP readiness + TCP liveness) at periodSeconds 1, "
          f"loop={args.loop}, grain={args.grain * 1000:g} ms, {args.seconds:.0f} s measured "
          f"per phase, {args.rounds} interleaved round(s), median run shown; "
          f"host load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (2 cores, shared)")
    print(f"{'phase':10} {'CPU %core':>9} {'RSS MB':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'missed':>6} {'probes/s':>9} {'in Py/s':>8} {'look-ups/s':>10}")
    for row in (baseline, floor, python, probes):
        cpus = sorted(run["cpu_percent"] for run in runs[row["phase"]])
        spread = f"  (CPU {cpus[0]:.1f}-{cpus[-1]:.1f})" if len(cpus) > 1 else ""
        missed = "-" if row["p50_ms"] is None else str(row["missed"])
        print(f"{row['phase']:10} {row['cpu_percent']:9.1f} {row['rss_mb']:7.1f} "
              f"{ms_text(row['p50_ms'])} {ms_text(row['p99_ms'])} {ms_text(row['max_ms'])} "
              f"{missed:>6} {row['probes_per_second']:9.0f} "
              f"{row['python_runs_per_second']:8.0f} {row['look_ups_per_second']:10.1f}"
              + spread)
    for row in (python, probes):
        print(f"lateness, {row['phase']}: {row['timed']} readiness ticks timed at the "
              f"targets, {row['missed']} with no arrival, {row['unanchored']} domain(s) "
              f"not timed (no startup success before {READINESS_DELAY_SECONDS} s), "
              f"{row['dropped']} arrival(s) not recorded")
    print("outcomes:", json.dumps(probes["outcomes"], sort_keys=True),
          f"(probes in the native lane at the end: {probes['offloaded']})")
    print("outcomes, python:", json.dumps(python["outcomes"], sort_keys=True))
    print("p50/p99/max ms: exact lateness of the readiness probes' arrivals at the "
          "targets against their schedule; missed: ticks in the window with no arrival. "
          "in Py/s: probes run by the Python handlers (in `probes`, those the native lane "
          "handed back when their cached addresses expired); look-ups/s: the guests' "
          "address look-ups (every address_refresh_seconds per guest)")
    for message in probes["sample_failures"]:
        print("  not a success:", message)
    ratio = probes["cpu_percent"] / max(baseline["cpu_percent"], 0.01)
    print(f"CPU ratio probes/floor: {probes['cpu_percent'] / max(floor['cpu_percent'], 0.01):.2f}x"
          f" (the floor is the kernel and event loop making the same connections)")
    native_gain = probes["cpu_percent"] / max(python["cpu_percent"], 0.01)
    print(f"CPU ratio probes/python: {native_gain:.2f}x"
          f" (the native lane against every probe in Python)")
    print(f"CPU ratio probes/baseline: {ratio:.1f}x; per probe: "
          f"{1e4 * probes['cpu_percent'] / max(probes['probes_per_second'], 1):.0f} us "
          f"(baseline {1e4 * baseline['cpu_percent'] / max(baseline['probes_per_second'], 1):.0f}"
          " us)")
    for key, label, unit in (("cpu_percent", "daemon CPU", "% of one core"),
                             ("rss_mb", "RSS", " MB"), ("p99_ms", "p99 lateness", " ms")):
        value, limit = probes[key], TARGETS[key]
        verdict = "PASS" if value is not None and value < limit else "MISS"
        other = python if key == "p99_ms" else baseline
        shown = ms_text if key == "p99_ms" else "{:.1f}".format
        print(f"{verdict}: {label} {shown(value).strip()}{unit} (target < {limit:g}{unit}; "
              f"{other['phase']} {shown(other[key]).strip()})")


if __name__ == "__main__":
    main()
