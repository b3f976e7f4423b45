"""The asyncio side of the native probe lane (vmhealth_fastlane, src/native/fastlane.c).

A settled network probe - healthy, its success threshold met, its last answer a plain
success from the first address tried - is repeated by the native engine in a thread
of its own, without the interpreter, until its answer differs (docs/probes.md, "The
native lane"). The prober (prober.py) decides when to hand a probe over and what to
do when the engine hands it back; this module only carries lanes and their counts
between the two:

- `offload()` starts a lane and remembers who owns it;
- the engine announces lanes it has ended on an eventfd the loop watches; each
  owner's `lane_ended(report)` is called with the tick to run and the silent
  successes counted since the last fold;
- `fold_all()` / `fold()` deliver the silent successes of running lanes (status and
  /metrics call it before they answer), `recall()` stops a lane.

The engine is an optional part, the module `vmhealth_fastlane` (src/native, packaged
as python3-vmhealth-fastlane; docs/packaging.md): when it is not installed, or is of
another version than vmhealth, `NativeLanes.start()` returns None and the Python engine
runs every probe, as the full fallback. `ENGINE` names which of the two this process
has, for the daemon's start-up log and its status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple, Protocol

from vmhealth import __version__
from vmhealth.excerpt import excerpt
from vmhealth.monitor.interfaces import Recipe
from vmhealth.monitor.metrics import DURATION_BUCKETS

log = logging.getLogger(__name__)

# The names the daemon reports for the engine that runs a probe (status, log).
NATIVE = "native"
PYTHON = "python"


def _load_engine() -> tuple[object | None, str]:
    """The native engine module, or None and why the Python engine runs everything."""
    try:
        import vmhealth_fastlane
    except ImportError as exc:
        return None, (f"the native probe lane is not installed ({excerpt(exc)}; "
                      "python3-vmhealth-fastlane, or pip install ./src/native)")
    found = getattr(vmhealth_fastlane, "__version__", "unknown")
    if found != __version__:
        return None, (f"the native probe lane is version {excerpt(found)}, vmhealth "
                      f"{__version__}: install the lane of the same version")
    return vmhealth_fastlane, ""


_fastlane, UNAVAILABLE = _load_engine()
# The engine the lanes use when the daemon's config allows them (native_lane = yes).
ENGINE = PYTHON if _fastlane is None else NATIVE

# Why the engine handed a tick back (src/native/fastlane.c, enum handback_reason).
DIFFERENT = getattr(_fastlane, "DIFFERENT", 1)  # the answer was not the settled success
TIMEOUT = getattr(_fastlane, "TIMEOUT", 2)  # no answer within timeoutSeconds
STALE = getattr(_fastlane, "STALE", 3)  # the guest's cached addresses expired
HOST = getattr(_fastlane, "HOST", 4)  # this host could not make a socket


class SilentSuccesses(NamedTuple):
    """Successes the engine counted without telling Python, since the last fold."""

    count: int
    buckets: tuple[int, ...]  # per metrics.DURATION_BUCKETS, the last one +Inf
    seconds: float  # sum of their durations
    last_started_at: float  # time.time() of the latest one
    last_duration: float


class Handback(NamedTuple):
    """A lane the engine ended: the tick Python is to run now, and why."""

    lane: int
    reason: int
    tick: float  # loop time of the tick handed back
    started_at: float  # time.time() the engine's attempt began (0.0: none began)
    duration: float  # how long that attempt ran
    silent: SilentSuccesses | None


class LaneOwner(Protocol):
    def lane_ended(self, handback: Handback) -> None: ...

    def lane_counts(self, silent: SilentSuccesses) -> None: ...


def _silent(counts: tuple | None) -> SilentSuccesses | None:
    if counts is None:
        return None
    count, buckets, seconds, last_started_at, last_duration = counts
    return SilentSuccesses(count, buckets, seconds, last_started_at, last_duration)


class NativeLanes:
    """One engine per daemon (one thread), serving every prober on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: object) -> None:
        self._loop = loop
        self._engine = engine
        self._owners: dict[int, LaneOwner] = {}
        loop.add_reader(engine.fileno(), self._take_reports)  # type: ignore[attr-defined]

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop | None = None, *,
              enabled: bool = True) -> NativeLanes | None:
        """The lanes, or None when they are turned off (`native_lane = no`) or the native
        engine is not installed (see ENGINE). Logs, once, which engine runs which probes."""
        if not enabled:
            log.info("probe engine: python for every probe (native_lane = no)")
            return None
        if _fastlane is None:
            log.warning("probe engine: python for every probe: %s; this costs more CPU on "
                        "large hosts", UNAVAILABLE)
            return None
        log.info("probe engine: native (vmhealth_fastlane %s) for settled readiness and "
                 "liveness probes over tcpSocket and plain-HTTP httpGet, python for every "
                 "other probe and run (`vmhealth status -o wide` shows each probe's)",
                 _fastlane.__version__)  # type: ignore[attr-defined]
        return cls(loop or asyncio.get_running_loop(), _fastlane.Engine(DURATION_BUCKETS))

    def __len__(self) -> int:
        return len(self._owners)

    def offload(self, owner: LaneOwner, recipe: Recipe, *, timeout: float, period: float,
                tick: float, valid_until: float) -> int | None:
        """Start a lane repeating `recipe` from `tick`; None if the engine refused it."""
        try:
            lane = self._engine.offload(  # type: ignore[attr-defined]
                recipe.host, recipe.port, recipe.request, recipe.status, timeout, period,
                tick, valid_until)
        except (ValueError, MemoryError) as exc:
            log.debug("probe not offloaded: %s", exc)
            return None
        self._owners[lane] = owner
        return lane

    def recall(self, lane: int) -> SilentSuccesses | None:
        """Stop a lane; its uncollected successes (None if the engine had already ended
        it: its handback, on its way, is then ignored)."""
        self._owners.pop(lane, None)
        return _silent(self._engine.recall(lane))  # type: ignore[attr-defined]

    def fold(self, lane: int) -> None:
        """Deliver one lane's silent successes to its owner now."""
        self._deliver(self._engine.fold(lane))  # type: ignore[attr-defined]

    def fold_all(self) -> None:
        """Deliver every lane's silent successes (before status or metrics are read)."""
        self._deliver(self._engine.fold(None))  # type: ignore[attr-defined]

    def _deliver(self, folded: list[tuple[int, tuple]]) -> None:
        for lane, counts in folded:
            owner = self._owners.get(lane)
            if owner is not None:
                owner.lane_counts(_silent(counts))  # type: ignore[arg-type]

    def _take_reports(self) -> None:
        for lane, reason, tick, started_at, duration, counts in \
                self._engine.take_reports():  # type: ignore[attr-defined]
            owner = self._owners.pop(lane, None)
            if owner is None:
                continue  # recalled meanwhile
            try:
                owner.lane_ended(Handback(lane, reason, tick, started_at, duration,
                                          _silent(counts)))
            except Exception:
                # One owner's bug must not stop the others' handbacks.
                log.exception("taking back a probe from the native lane failed")

    def close(self) -> None:
        """Stop the engine thread (bounded: it answers within one turn, <= 1 s)."""
        try:
            self._loop.remove_reader(self._engine.fileno())  # type: ignore[attr-defined]
        except (RuntimeError, ValueError):
            pass  # the loop or the engine is already closed
        self._owners.clear()
        self._engine.close()  # type: ignore[attr-defined]

