"""Does the probe engine leak? RSS and CPU of the probes phase, minute by minute.

    .venv/bin/python benchmarks/soak_probes.py [--minutes 10] [--domains 1000]
                                               [--engine native|python] [--tracemalloc N]
                                               [--trim]

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

Where RSS goes, each minute: anonymous and file-backed (code paged in) resident
memory; what malloc holds in use (the native lane, libraries, Python's larger blocks)
and keeps free in its heaps (fragmentation); the Python allocator's arenas. A leak
shows as growth in use; memory that malloc keeps for reuse levels off. --tracemalloc N
also prints the N source lines whose Python allocations grew most since the minute
before (slower, and RSS then includes the traces).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
import tracemalloc
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's mallinfo2, or None elsewhere (musl, glibc < 2.33)."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


MALLINFO2 = _mallinfo2()


def malloc_trim() -> bool:
    """Give malloc's free memory back to the system (glibc's malloc_trim(0))."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    return bool(trim(0))


def malloc_mb() -> tuple[float, float]:
    """(bytes in use, bytes free but kept) in malloc's heaps and mappings, in MB: what
    C code (the native lane, libraries) and Python's larger blocks hold, and what
    fragmentation keeps; (nan, nan) without glibc's mallinfo2."""
    if MALLINFO2 is None:
        return float("nan"), float("nan")
    info = MALLINFO2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def rss_parts_mb() -> tuple[float, float]:
    """(anonymous, file-backed) resident memory in MB (/proc/self/status, Linux): the
    second is code and data of the interpreter and libraries paged in as they are
    first used."""
    parts = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                parts[name] = int(value.split()[0]) / 1024
    return parts.get("RssAnon", float("nan")), parts.get("RssFile", float("nan"))


def python_arenas_mb() -> float:
    """The memory of the Python allocator's arenas (sys._debugmallocstats, which
    writes to stderr), in MB: what Python's small objects occupy, fragmentation
    included."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        found = re.search(rb"^(\d+) arenas \* (\d+) bytes/arena", out.read(), re.MULTILINE)
    return int(found[1]) * int(found[2]) / 2**20 if found else float("nan")


def python_heap_growth(before: tracemalloc.Snapshot | None, top: int) -> tracemalloc.Snapshot:
    """Print the source lines whose Python allocations grew most since `before`; return
    the new snapshot (for the next minute)."""
    snapshot = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ))
    if before is not None:
        for stat in snapshot.compare_to(before, "lineno")[:top]:
            frame = stat.traceback[0]
            print(f"    {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
                  f"{frame.filename}:{frame.lineno}", flush=True)
    return snapshot


async def soak(ports: list[int], domains: int, minutes: int, native: bool,
               trace_top: int = 0, trim: bool = False) -> list[dict]:
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
    heap = python_heap_growth(None, 0) if trace_top else None
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
                "threads": threading.active_count(),
                "malloc_used_mb": malloc_mb()[0],
                "malloc_free_mb": malloc_mb()[1],
                "python_arenas_mb": python_arenas_mb(),
                "rss_anon_mb": rss_parts_mb()[0],
                "rss_file_mb": rss_parts_mb()[1],
                "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20,
            })
            row = rows[-1]
            print(f"minute {minute:3}: RSS {row['rss_mb']:6.1f} MB (anonymous "
                  f"{row['rss_anon_mb']:.1f}, files {row['rss_file_mb']:.1f}), "
                  f"CPU {row['cpu_percent']:5.1f}%"
                  f", gc objects {row['gc_objects']:8}, probes {row['probes']}, "
                  f"address look-ups {row['look_ups']}, threads {row['threads']}, "
                  f"malloc in use {row['malloc_used_mb']:.1f} MB, "
                  f"free in its heaps {row['malloc_free_mb']:.1f} MB, "
                  f"Python arenas {row['python_arenas_mb']:.1f} MB"
                  + (f", Python heap {row['traced_mb']:.1f} MB" if trace_top else ""),
                  flush=True)
            if trace_top:
                heap = python_heap_growth(heap, trace_top)
            if trim:
                malloc_trim()
                row["trimmed_rss_mb"] = process.memory_info().rss / 2**20
                print(f"    after malloc_trim: RSS {row['trimmed_rss_mb']:.1f} MB, "
                      f"free in malloc's heaps {malloc_mb()[1]:.1f} MB", flush=True)
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
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                        help="trace Python allocations and print, every minute, the N "
                             "source lines whose allocations grew most (slower; RSS then "
                             "includes the traces)")
    parser.add_argument("--trim", action="store_true",
                        help="after each minute's figures, give malloc's free memory back "
                             "(malloc_trim) and print RSS again: what is left is in use")
    args = parser.parse_args()
    if args.minutes < 3:
        parser.error("--minutes must be at least 3 (the first minute is warm-up)")
    with serving_targets(60 * args.minutes + 120) as ports:
        if args.tracemalloc:
            tracemalloc.start()
        rows = asyncio.run(soak(ports, args.domains, args.minutes, args.engine == "native",
                                args.tracemalloc, args.trim))
    second, last = rows[1], rows[-1]
    minutes = last["minute"] - second["minute"]
    print(f"RSS from minute {second['minute']} to {last['minute']}: "
          f"{last['rss_mb'] - second['rss_mb']:+.1f} MB "
          f"({(last['rss_mb'] - second['rss_mb']) / minutes:+.2f} MB a minute); "
          f"gc objects {last['gc_objects'] - second['gc_objects']:+d}; "
          f"{sum(r['probes'] for r in rows)} probes in all")


if __name__ == "__main__":
    main()
