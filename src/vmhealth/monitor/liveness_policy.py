"""What the daemon does when a domain's liveness (or startup) probe crosses its
failureThreshold: re-read the domain's state, skip when failures must not count (a
pause, a migration, a shutdown: LibvirtGuestAccess.suppression_reason), otherwise run
the spec's onLivenessFailure through the ActionRunner (actions.py) and report it.

An action already in flight answers later failures too; a reset is a new boot without
stop/start events, so the domain is adopted afresh once it is done.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable

from vmhealth.monitor.actions import ActionRunner
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.registry import DomainRegistry
from vmhealth.spec import LivenessAction


class LivenessPolicy:
    def __init__(self, registry: DomainRegistry, actions: ActionRunner, *, events: EventLog,
                 spawn: Callable[[Awaitable[Any]], Any],
                 is_stopping: Callable[[], bool]) -> None:
        self._registry = registry
        self._actions = actions
        self._events = events
        self._spawn = spawn
        self._is_stopping = is_stopping

    def liveness_failed(self, monitor: DomainMonitor, result: ProbeResult) -> None:
        """The DomainMonitor's report (from the prober's callback): decide on the loop."""
        self._spawn(self.act(monitor, result))

    async def act(self, monitor: DomainMonitor, result: ProbeResult) -> None:
        name = monitor.name
        kind = monitor.failing_kind()
        if self._is_stopping() or self._registry.monitors.get(monitor.uuid) is not monitor:
            return  # stopping, or the domain was restarted/released meanwhile
        if self._actions.pending.get(monitor.uuid) is not None:
            return  # the action in flight answers this failure too
        await self._registry.refresh_state(monitor)  # never act on a stale "running"
        suppressed = monitor.access.suppression_reason()
        if suppressed:
            self._events.record(name, "ActionSkipped",
                                f"{kind.short} failed but the domain is {suppressed}: no action")
            return
        action = monitor.spec.on_liveness_failure
        self._events.record(name, "LivenessFailed", f"{kind.short} failed: {result.message}; "
                            f"action {action.value}", probe=kind.short, action=action.value)
        if action is LivenessAction.NONE:
            return
        probe = monitor.spec.probes()[kind]
        task = self._actions.start(monitor.access.dom, action,
                                   monitor.spec.grace_period_for(probe), result.message)
        if task is None:
            return
        monitor.readiness_changed()  # not ready while the action runs
        task.add_done_callback(lambda _task: monitor.readiness_changed())
        if action is LivenessAction.RESET:
            # A reset is a new boot without stop/start events: probe it afresh.
            await task
            self._spawn(self._registry.adopt(monitor.access.dom, "reset", new_run=True))
