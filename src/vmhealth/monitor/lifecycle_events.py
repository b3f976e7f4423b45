"""What the daemon does with each libvirt domain event and each hook spool nudge.

libvirt calls these on the event loop (libvirtaio); each handler only records, counts
and hands work to the registry or the ActionRunner as a background task, so libvirt's
event dispatch never waits:

- lifecycle: started (adopt afresh: a new run), stopped/crashed (release), defined,
  undefined (re-read the spec), anything else of a monitored domain (suspended,
  resumed, shutdown begun: re-read its state); every one also feeds the run strategy
  (monitor/run_strategy.py), which may start a stopped domain again;
- watchdog: a Watchdog event and metric, and a clue for the run strategy;
- guest agent connected/disconnected (monitored domains only);
- metadata changed (ours, or any element change: re-read the spec);
- the hook's spool file appeared or went: a nudge to ask libvirt.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable

import libvirt

from vmhealth.domainxml import NAMESPACE
from vmhealth.monitor.actions import ActionRunner
from vmhealth.monitor.adoption import domain_spec
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.registry import DomainRegistry

WATCHDOG_ACTIONS = {
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE: "none",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_PAUSE: "pause",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET: "reset",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF: "poweroff",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_DEBUG: "dump",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI: "inject-nmi",
}

# Why a domain stopped (the lifecycle event's detail), for the Released event: after a
# migration the source's operator should read "migrated", not a bare "stopped".
STOP_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated to another host",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "reverted to a snapshot",
}


class LifecycleEvents:
    def __init__(self, registry: DomainRegistry, actions: ActionRunner, *,
                 events: EventLog, metrics: Metrics, spec_defaults: dict[str, Any],
                 spawn: Callable[[Awaitable[Any]], Any],
                 is_stopping: Callable[[], bool]) -> None:
        self._registry = registry
        self._actions = actions
        self._events = events
        self._metrics = metrics
        self._spec_defaults = spec_defaults
        self._spawn = spawn
        self._is_stopping = is_stopping

    def callbacks(self) -> dict[int, Callable[..., None]]:
        """libvirt domain event id -> callback, for LibvirtConnection.subscribe."""
        return {
            libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE: self.on_lifecycle,
            libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG: self.on_watchdog,
            libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE: self.on_agent,
            libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE: self.on_metadata,
        }

    # --- the hook's spool files (SpoolWatcher) -----------------------------------------
    def spool_present(self, uuid: str) -> None:
        self._spawn(self._registry.adopt_uuid(uuid, "hook"))

    def spool_removed(self, uuid: str) -> None:
        # The hook removes the file when the domain stops; libvirt confirms it.
        self._spawn(self._registry.adopt_uuid(uuid, "hook"))

    # --- libvirt domain events ---------------------------------------------------------
    def on_lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int,
                     _opaque: Any) -> None:
        registry = self._registry
        uuid = dom.UUIDString()
        self._follow_run_strategy(dom, event, detail)
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            self._spawn(registry.adopt(dom, "started", new_run=True))
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._spawn(registry.drop(uuid, f"stopped: {STOP_DETAILS.get(detail, detail)}"))
        elif event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            self._spawn(registry.drop(uuid, "crashed"))
        elif event in (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
            self._spawn(registry.adopt(dom, "redefined"))
        elif uuid in registry.monitors:  # suspended, resumed, pmsuspended, shutdown begun
            self._spawn(registry.refresh_state(registry.monitors[uuid]))

    def on_watchdog(self, _conn: Any, dom: libvirt.virDomain, action: int,
                    _opaque: Any) -> None:
        name = WATCHDOG_ACTIONS.get(action, str(action))
        self._metrics.count_watchdog(dom.name(), name)
        self._events.record(dom.name(), "Watchdog", f"watchdog fired; action {name}",
                            action=name)
        # A stop that follows is the watchdog's.
        self._actions.stop_clues.watchdog(dom.UUIDString(), name)

    def _follow_run_strategy(self, dom: libvirt.virDomain, event: int, detail: int) -> None:
        """Run strategies (monitor/run_strategy.py): note what ends each run, and after
        a stop start the domain again when its spec's runStrategy asks for that (every
        domain: one with only a watchdog has no monitor). Nothing new while stopping."""
        actions = self._actions
        uuid = dom.UUIDString()
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            actions.stop_clues.started(uuid)
        elif event == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN:
            actions.stop_clues.shutdown_begun(uuid, detail)
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            cause = actions.stop_clues.stopped(uuid, detail)
            if not self._is_stopping():
                defaults = self._spec_defaults
                actions.start_again(dom, cause, lambda d: domain_spec(d, defaults))

    def on_agent(self, _conn: Any, dom: libvirt.virDomain, state: int, reason: int,
                 _opaque: Any) -> None:
        connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        monitor = self._registry.monitors.get(dom.UUIDString())
        if monitor is None:
            # Not ours to report: any guest can toggle its agent in a loop, and its
            # events would only crowd monitored domains' events out of the ring.
            return
        if connected:
            monitor.access.forget_addresses()  # the agent may know addresses now
            monitor.prober.recall_lanes()  # ... so no lane keeps probing the old ones
        self._events.record(dom.name(), "AgentConnected" if connected else "AgentDisconnected",
                            "guest agent " + ("connected" if connected else "disconnected"),
                            reason=reason)

    def on_metadata(self, _conn: Any, dom: libvirt.virDomain, mtype: int, nsuri: str | None,
                    _opaque: Any) -> None:
        if mtype != libvirt.VIR_DOMAIN_METADATA_ELEMENT or nsuri in (None, NAMESPACE):
            self._spawn(self._registry.adopt(dom, "metadata changed"))
