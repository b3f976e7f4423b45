"""Run strategies, daemon side: after a stop, start the domain again or leave it off.

The spec side (spec_rules.RUN_STRATEGY_RESTARTS, README "Run strategies") says what
each KubeVirt strategy restarts: `Always` after a failure and after the guest shut
itself down, `RerunOnFailure` after a failure only, `Manual`, `Halted` and `Once`
never. This module says what a stop *was*, from what libvirt told the daemon about
the run that ended, and decides:

- `stop_cause` (pure): the STOPPED event's detail, the SHUTDOWN event's detail seen
  before it, a recent watchdog action and vmhealth's own liveness action -> a
  StopCause;
- `decide` (pure): a run strategy and a StopCause -> start again or not, and why;
- `StopClues`: what the daemon saw during a run (watchdog, shutdown begun, its own
  liveness action), kept per domain until the run stops or a new one starts;
- `verdict` (blocking, libvirt): the decision against the domain as it is now (still
  defined, persistent, off, its stored spec's strategy), asked before the start and
  again after the back-off.

An operator's stop is never undone: `virsh destroy`, a host-requested shutdown
(QEMU told to quit by a signal: libvirt's SHUTDOWN detail HOST), save, migration and
a snapshot revert leave the domain off whatever the strategy, as KubeVirt's
controller never fights a stop that came through its API (it sets the strategy to
Halted instead). libvirt cannot tell an operator's ACPI `virsh shutdown` from a
shutdown the guest started (both are "guest" to QEMU: the guest's OS does the
shutting down), so that one counts as the guest's.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Callable

import libvirt

from vmhealth.monitor.adoption import InvalidSpec
from vmhealth.spec import RunStrategy

# A stop within this many seconds of a watchdog action that stops the domain is the
# watchdog's. poweroff ends QEMU at once (libvirt then reports STOPPED/FAILED: QEMU
# ended without a shutdown); shutdown asks the guest by ACPI, and a guest whose
# watchdog feeder died may take a while to get there.
WATCHDOG_STOP_WINDOW_SECONDS = 120.0
# The watchdog actions (lifecycle_events.WATCHDOG_ACTIONS' names) that end the run.
STOPPING_WATCHDOG_ACTIONS = frozenset({"poweroff", "shutdown"})
# vmhealth's own liveness actions that stop a domain (ActionRunner marks them).
OWN_RESTART = "restart"
OWN_POWEROFF = "poweroff"


class StopCause(enum.Enum):
    """Why a run ended; the value is the event field `cause`."""

    GUEST_SHUTDOWN = "guest-shutdown"
    CRASHED = "crashed"
    FAILED = "failed"
    WATCHDOG = "watchdog"
    LIVENESS_POWEROFF = "liveness-poweroff"
    LIVENESS_RESTART = "liveness-restart"
    DESTROYED = "destroyed"
    HOST_SHUTDOWN = "host-shutdown"
    SAVED = "saved"
    MIGRATED = "migrated"
    FROM_SNAPSHOT = "snapshot-revert"
    UNKNOWN = "unknown"

    @property
    def text(self) -> str:
        return _CAUSE_TEXT[self]

    @property
    def is_failure(self) -> bool:
        """A stop KubeVirt would call a run Failed (RerunOnFailure starts it again)."""
        return self in FAILURES

    @property
    def is_operators(self) -> bool:
        """A stop an operator (or a libvirt job an operator started) asked for."""
        return self in OPERATORS


_CAUSE_TEXT = {
    StopCause.GUEST_SHUTDOWN: "the guest shut down",
    StopCause.CRASHED: "the guest crashed",
    StopCause.FAILED: "QEMU ended without a shutdown",
    StopCause.WATCHDOG: "the watchdog stopped it",
    StopCause.LIVENESS_POWEROFF: "the liveness action poweroff stopped it",
    StopCause.LIVENESS_RESTART: "a liveness restart is in flight",
    StopCause.DESTROYED: "destroyed (virsh destroy)",
    StopCause.HOST_SHUTDOWN: "shut down by the host",
    StopCause.SAVED: "saved",
    StopCause.MIGRATED: "migrated to another host",
    StopCause.FROM_SNAPSHOT: "reverted to a snapshot",
    StopCause.UNKNOWN: "stopped for a reason this libvirt reports and vmhealth does not know",
}
FAILURES = frozenset({StopCause.CRASHED, StopCause.FAILED, StopCause.WATCHDOG,
                      StopCause.LIVENESS_POWEROFF})
# UNKNOWN is here: a stop vmhealth cannot read is not fought.
OPERATORS = frozenset({StopCause.DESTROYED, StopCause.HOST_SHUTDOWN, StopCause.SAVED,
                       StopCause.MIGRATED, StopCause.FROM_SNAPSHOT, StopCause.UNKNOWN})
# STOPPED details that are an operator's act whatever else was seen.
_OPERATOR_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: StopCause.SAVED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: StopCause.MIGRATED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: StopCause.FROM_SNAPSHOT,
}
# STOPPED details of a run that ended by itself (or by a host-side shutdown request).
_OWN_DETAILS = (libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN,
                libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
                libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED)


def stop_cause(detail: int, *, shutdown_detail: int | None = None,
               watchdog_action: str | None = None, own_action: str | None = None
               ) -> StopCause:
    """Why a run ended.

    `detail`: the STOPPED event's; `shutdown_detail`: the SHUTDOWN event's seen during
    the run (None: none seen); `watchdog_action`: a stopping watchdog action seen
    shortly before; `own_action`: the liveness action of vmhealth's that stopped it.
    In this order: a liveness restart in flight owns the stop; save, migration and
    snapshot revert are the operator's; our own poweroff is a failure; a destroy we
    did not do is the operator's, and so is a detail this code does not know; then
    our poweroff again (the domain beat our destroy to it), the crash, a host-requested
    shutdown (the operator's), the watchdog, QEMU's end, the guest's shutdown.
    """
    if own_action == OWN_RESTART:
        return StopCause.LIVENESS_RESTART
    if detail in _OPERATOR_DETAILS:
        return _OPERATOR_DETAILS[detail]
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
        return StopCause.LIVENESS_POWEROFF if own_action == OWN_POWEROFF \
            else StopCause.DESTROYED
    if detail not in _OWN_DETAILS:
        return StopCause.UNKNOWN
    if own_action == OWN_POWEROFF:
        # It stopped by itself while our destroy was on its way: still a failure.
        return StopCause.LIVENESS_POWEROFF
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED:
        return StopCause.CRASHED
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN \
            and shutdown_detail == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST:
        return StopCause.HOST_SHUTDOWN
    if watchdog_action:
        return StopCause.WATCHDOG
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED:
        return StopCause.FAILED
    return StopCause.GUEST_SHUTDOWN


@dataclass(frozen=True)
class Decision:
    start: bool
    reason: str


def decide(strategy: RunStrategy, cause: StopCause) -> Decision:
    """Start the domain again after `cause`, under `strategy`? With the reason."""
    if cause is StopCause.LIVENESS_RESTART:
        return Decision(False, "left to the liveness restart in flight")
    if cause.is_operators:
        return Decision(False, f"{cause.text}: an operator's stop is never undone")
    if cause.is_failure:
        start = strategy.restarts_after_failure
    else:
        start = strategy.restarts_after_guest_shutdown
    if start:
        return Decision(True, f"runStrategy {strategy.value}: {cause.text}")
    return Decision(False, f"runStrategy {strategy.value} leaves it off after: {cause.text}")


def restarts_anything(strategy: RunStrategy) -> bool:
    """Whether `strategy` ever starts a domain (Manual, Halted, Once: never)."""
    return strategy.restarts_after_failure or strategy.restarts_after_guest_shutdown


@dataclass
class _RunClues:
    watchdog_action: str | None = None
    watchdog_at: float = 0.0
    shutdown_detail: int | None = None
    own_action: str | None = None


class StopClues:
    """What the daemon saw during each domain's current run, for stop_cause.

    Kept per domain UUID from the events of the run and dropped when it stops or a
    new run starts; a guest can only add clues about its own domain, one small record
    each, and `retain` forgets domains deleted from the host.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 window: float = WATCHDOG_STOP_WINDOW_SECONDS) -> None:
        self._clock = clock
        self._window = window
        self._runs: dict[str, _RunClues] = {}

    def started(self, uuid: str) -> None:
        self._runs.pop(uuid, None)

    def watchdog(self, uuid: str, action: str) -> None:
        if action in STOPPING_WATCHDOG_ACTIONS:
            clues = self._runs.setdefault(uuid, _RunClues())
            clues.watchdog_action, clues.watchdog_at = action, self._clock()

    def shutdown_begun(self, uuid: str, detail: int) -> None:
        self._runs.setdefault(uuid, _RunClues()).shutdown_detail = detail

    def own_stop(self, uuid: str, action: str) -> None:
        """vmhealth is about to stop the domain with liveness action `action`."""
        self._runs.setdefault(uuid, _RunClues()).own_action = action

    def stopped(self, uuid: str, detail: int) -> StopCause:
        """The run ended with STOPPED `detail`: its cause; its clues are gone."""
        clues = self._runs.pop(uuid, None) or _RunClues()
        recent = clues.watchdog_action is not None \
            and self._clock() - clues.watchdog_at <= self._window
        return stop_cause(detail, shutdown_detail=clues.shutdown_detail,
                          watchdog_action=clues.watchdog_action if recent else None,
                          own_action=clues.own_action)

    def retain(self, uuids: set[str]) -> None:
        for uuid in [u for u in self._runs if u not in uuids]:
            del self._runs[uuid]


@dataclass(frozen=True)
class Verdict:
    """`decide` against the domain as it is now. `noteworthy`: worth an event when it
    does not start (the strategy starts domains, or a start was already promised)."""

    start: bool
    reason: str
    strategy: str | None = None
    noteworthy: bool = False


def verdict(dom: Any, cause: StopCause, spec_reader: Callable[[Any], Any]) -> Verdict:
    """Blocking: start `dom` again now, after `cause`? `spec_reader(dom)` gives its
    stored spec (None without one; it raises InvalidSpec for a bad one)."""
    try:
        if not dom.isPersistent():
            # Gone once it stopped, as KubeVirt never restarts a bare VMI.
            return Verdict(False, "transient domain: nothing to start again")
        if dom.isActive():
            return Verdict(False, "already running")
        spec = spec_reader(dom)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return Verdict(False, "undefined: nothing to start again")
        raise
    except InvalidSpec as exc:
        return Verdict(False, f"its spec is invalid: {exc}")
    if spec is None:
        return Verdict(False, "no health spec")
    strategy = spec.run_strategy
    decision = decide(strategy, cause)
    return Verdict(decision.start, decision.reason, strategy.value,
                   restarts_anything(strategy))
