"""One monitored domain: its spec, its prober, and the state the daemon publishes.

DomainMonitor is the ProbeListener the probe engine reports to. It keeps the last
result and published state of every probe kind for `status`, feeds metrics and
events, and hands a liveness failure to the daemon, which decides whether to act.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult, StateChange
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess, paused_reason
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.native_lane import NATIVE, PYTHON
from vmhealth.spec import HealthSpec, ProbeKind

EVENT_TYPES = {
    ProbeKind.READINESS: ("Ready", "NotReady"),
    ProbeKind.LIVENESS: ("Alive", "Unhealthy"),
    ProbeKind.STARTUP: ("Started", "StartupFailed"),
}


@dataclass
class ProbeStatus:
    healthy: bool | None  # None = unknown
    reason: str
    since: float
    last_result: ProbeResult | None = None
    last_counted: bool = True

    def to_dict(self, *, native_lane: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"healthy": self.healthy, "reason": self.reason,
                               "since": self.since, "nativeLane": native_lane,
                               "engine": NATIVE if native_lane else PYTHON}
        if self.last_result is not None:
            result = self.last_result
            out["lastResult"] = {"outcome": result.outcome.value, "message": result.message,
                                 "duration": round(result.duration, 6),
                                 "time": result.started_at, "counted": self.last_counted}
        return out


class DomainMonitor:
    def __init__(self, uuid: str, run_id: int, spec: HealthSpec, access: LibvirtGuestAccess,
                 *, events: EventLog, metrics: Metrics,
                 on_liveness_failed: Callable[[DomainMonitor, ProbeResult], None],
                 pending_action: Callable[[str], Any] = lambda uuid: None) -> None:
        self.uuid = uuid
        self.run_id = run_id  # libvirt's domain id: changes with every start
        self.spec = spec
        self.access = access
        self.prober: Any = None
        self.adopted_at = time.time()
        self.probes: dict[ProbeKind, ProbeStatus] = {}
        self._events = events
        self._metrics = metrics
        self._on_liveness_failed = on_liveness_failed
        self._pending_action = pending_action  # the liveness action in flight, if any
        self._published_ready: bool | None = None
        self._was_paused = False

    def attach(self, prober: Any) -> None:
        """Take the prober's initial states (it publishes only changes after that)."""
        self.prober = prober
        now = time.time()
        for kind, snapshot in prober.snapshot().items():
            self.probes[kind] = ProbeStatus(snapshot.healthy, snapshot.reason, now,
                                            snapshot.last_result)
            self._metrics.set_healthy(self.name, kind, snapshot.healthy)
        self.readiness_changed()

    @property
    def name(self) -> str:
        return self.access.name

    # --- ProbeListener -------------------------------------------------------------
    def on_result(self, kind: ProbeKind, result: ProbeResult, *, counted: bool) -> None:
        status = self.probes.get(kind)
        if status is not None:
            status.last_result = result
            status.last_counted = counted
        self._metrics.observe_result(self.name, kind, result, counted)

    def on_repeated_successes(self, kind: ProbeKind, last: ProbeResult, count: int,
                              buckets: tuple[int, ...], seconds: float) -> None:
        status = self.probes.get(kind)
        if status is not None:
            status.last_result = last
            status.last_counted = True
        self._metrics.observe_repeated(self.name, kind, count, buckets, seconds)

    def on_state_change(self, change: StateChange) -> None:
        status = self.probes.setdefault(change.kind, ProbeStatus(None, "", time.time()))
        if change.result is not None:
            status.last_result = change.result
        if status.healthy == change.healthy and status.reason == change.reason:
            return
        status.healthy = change.healthy
        status.reason = change.reason
        status.since = time.time()
        self._metrics.set_healthy(self.name, change.kind, change.healthy)
        good, bad = EVENT_TYPES[change.kind]
        if change.healthy is not None:
            self._events.record(self.name, good if change.healthy else bad,
                                f"{change.kind.short}: {change.reason}", probe=change.kind.short)
        self.readiness_changed()

    def on_liveness_failed(self, result: ProbeResult) -> None:
        self._on_liveness_failed(self, result)

    # --- published state -------------------------------------------------------------
    def failing_kind(self) -> ProbeKind:
        """The probe whose failure asks for action: startup until it has succeeded."""
        startup = self.probes.get(ProbeKind.STARTUP)
        if startup is not None and startup.healthy is not True:
            return ProbeKind.STARTUP
        return ProbeKind.LIVENESS

    def not_ready_because(self) -> str | None:
        """Why the domain is not ready, or None when it is: the one rule behind
        `ready` in `status`, `status DOMAIN`, /ready/<domain> and the metrics."""
        pending = self._pending_action(self.uuid)
        if pending is not None:
            return f"liveness action {pending.action} in progress ({pending.phase})"
        paused = paused_reason(self.access.state)
        if paused is not None:
            # KubeVirt's readiness gate kubevirt.io/virtual-machine-unpaused.
            return f"domain {paused}"
        startup = self.probes.get(ProbeKind.STARTUP)
        if startup is not None and startup.healthy is not True:
            return f"{ProbeKind.STARTUP.short}: {startup.reason}"
        liveness = self.probes.get(ProbeKind.LIVENESS)
        if liveness is not None and liveness.healthy is False:
            return f"{ProbeKind.LIVENESS.short}: {liveness.reason}"
        readiness = self.probes.get(ProbeKind.READINESS)
        # Kubernetes: without a readiness probe a started container counts as ready.
        if readiness is not None and readiness.healthy is not True:
            return f"{ProbeKind.READINESS.short}: {readiness.reason}"
        return None

    @property
    def ready(self) -> bool:
        return self.not_ready_because() is None

    def readiness_changed(self) -> None:
        """Publish the domain's readiness (metric) when it flips; a flip that no probe
        made (a pause, a resume, an action) gets its own event."""
        reason = self.not_ready_because()
        ready = reason is None
        if ready == self._published_ready:
            return
        first = self._published_ready is None
        self._published_ready = ready
        self._metrics.set_ready(self.name, ready)
        if first:
            return
        paused = paused_reason(self.access.state)
        if paused is not None and not ready:
            self._events.record(self.name, "NotReady", f"not ready: domain {paused}",
                                reason="paused")
        elif ready and self._was_paused:
            self._events.record(self.name, "Ready", "ready: domain resumed",
                                reason="resumed")
        self._was_paused = paused is not None

    @property
    def live(self) -> bool:
        liveness = self.probes.get(ProbeKind.LIVENESS)
        return liveness is None or liveness.healthy is not False

    def to_dict(self) -> dict[str, Any]:
        state = self.access.state
        # Probes the native lane repeats (docs/probes.md); their last result is the
        # lane's latest success, folded in before status is read.
        native = self.prober.native_kinds() if self.prober is not None else set()
        not_ready = self.not_ready_because()
        pending = self._pending_action(self.uuid)
        entry = {
            "name": self.name,
            "uuid": self.uuid,
            "state": state.name if state is not None else "unknown",
            "suppressed": self.access.suppression_reason(),
            "ready": not_ready is None,
            "notReadyReason": not_ready,
            "live": self.live,
            "adoptedAt": self.adopted_at,
            "onLivenessFailure": self.spec.on_liveness_failure.value,
            "guestAgentPingPaused": self.spec.guest_agent_ping_paused,
            "probes": {kind.short: status.to_dict(native_lane=kind in native)
                       for kind, status in self.probes.items()},
        }
        if pending is not None:
            entry["action"] = pending.to_dict()
        return entry
