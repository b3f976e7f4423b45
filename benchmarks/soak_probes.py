"""Does the probe engine leak? RSS and CPU of the probes phase, minute by minute.

    .venv/bin/python benchmarks/soak_probes.py [--minutes 10] [--domains 1000]
                                               [--engine native|python]

The same set-up as bench_probes.py's `probes` phase (1,000 simulated domains, an HTTP
readiness and a TCP liveness probe each at periodSeconds 1, targets on loopback in
another process, the daemon's own listener with status, events and metrics), run for
--minutes in this process. Prints, once a minute, RSS, the CPU of that minute (% of
one core), objects tracked by the garbage collector and the probes run; then the RSS
growth from the second minute to the last (the first minute includes warm-up: caches,
the socket pool, the allocator's arenas). A steady RSS and object count at 120,000
probes a minute is the evidence that nothing accumulates per probe. The guests are
bench_probes.py's FakeGuest: the daemon's address cache, so every guest's addresses
are looked up again every 30 s (address_refresh_seconds) and the native lane hands
their probes back to Python when they expire, as in the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bench_probes import (  # noqa: E402 - after the path set-up above
    CountingMonitor,
    FakeGuest,
    GuestPools,
    Tally,
    cpu_seconds,
    domain_spec,
    serving_targets,
)

from vmhealth.monitor.coarse_timers import CoarseTimers  # noqa: E402
from vmhealth.monitor.events import EventLog  # noqa: E402
from vmhealth.monitor.metrics import Metrics  # noqa: E402
from vmhealth.monitor.native_lane import NativeLanes  # noqa: E402
from vmhealth.monitor.prober import DomainProber, LoopClock  # noqa: E402
from vmhealth.monitor.probes import starter_for  # noqa: E402


async def soak(ports: list[int], domains: int, minutes: int, native: bool) -> list[dict]:
    lanes = NativeLanes.start() if native else None
    if native and lanes is None:
        raise SystemExit("vmhealth_fastlane is not installed (pip install ./src/native)")
    tally = Tally()
    tally.measuring = True  # count every outcome
    events, metrics, pools = EventLog(), Metrics(), GuestPools()
    clock = LoopClock(CoarseTimers())
    probers = []
    for i in range(domains):
        health, access = domain_spec(ports[i % len(ports)]), FakeGuest(f"vm{i}", pools, tally)
        monitor = CountingMonitor(tally, f"uuid-{i}", health, access, events, metrics)
        prober = DomainProber(health, access, monitor, starters=starter_for, clock=clock,
                              lanes=lanes)
        monitor.attach(prober)
        probers.append(prober)
    for prober in probers:
        prober.start(jitter_first_probe=True)
    process = psutil.Process()
    rows = []
    try:
        for minute in range(1, minutes + 1):
            cpu0, wall0 = cpu_seconds(), time.monotonic()
            runs0, look_ups0 = sum(tally.outcomes.values()), tally.look_ups
            await asyncio.sleep(60)
            if lanes is not None:
                lanes.fold_all()  # as a /metrics scrape would, once a minute
            rows.append({
                "minute": minute,
                "rss_mb": process.memory_info().rss / 2**20,
                "cpu_percent": 100 * (cpu_seconds() - cpu0) / (time.monotonic() - wall0),
                "gc_objects": len(gc.get_objects()),
                "probes": sum(tally.outcomes.values()) - runs0,
                "look_ups": tally.look_ups - look_ups0,
            })
            row = rows[-1]
            print(f"minute {minute:3}: RSS {row['rss_mb']:6.1f} MB, CPU {row['cpu_percent']:5.1f}%"
                  f", gc objects {row['gc_objects']:8}, probes {row['probes']}, "
                  f"address look-ups {row['look_ups']}", flush=True)
    finally:
        await asyncio.gather(*(prober.stop() for prober in probers))
        if lanes is not None:
            lanes.close()
        pools.close()
    not_success = {f"{kind.short}:{outcome.value}": n
                   for (kind, outcome), n in tally.outcomes.items() if outcome.value != "success"}
    print("outcomes other than success:", json.dumps(not_success) if not_success else "none")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--engine", choices=("native", "python"), default="native",
                        help="native: settled probes in the native lane, as the daemon "
                             "ships (native_lane = yes); python: every probe in Python")
    args = parser.parse_args()
    if args.minutes < 3:
        parser.error("--minutes must be at least 3 (the first minute is warm-up)")
    with serving_targets(60 * args.minutes + 120) as ports:
        rows = asyncio.run(soak(ports, args.domains, args.minutes, args.engine == "native"))
    second, last = rows[1], rows[-1]
    minutes = last["minute"] - second["minute"]
    print(f"RSS from minute {second['minute']} to {last['minute']}: "
          f"{last['rss_mb'] - second['rss_mb']:+.1f} MB "
          f"({(last['rss_mb'] - second['rss_mb']) / minutes:+.2f} MB a minute); "
          f"gc objects {last['gc_objects'] - second['gc_objects']:+d}; "
          f"{sum(r['probes'] for r in rows)} probes in all")


if __name__ == "__main__":
    main()
