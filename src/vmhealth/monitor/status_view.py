"""What the API publishes about the monitored domains (api.StatusSource's queries).

Every domain's entry is DomainMonitor.to_dict(), in `status()` and `domain_status()`
alike, so `ready` follows one rule (DomainMonitor.not_ready_because) whichever is asked.
The native lane's silent successes are folded in before an entry is read.
"""

from __future__ import annotations

from typing import Any

from vmhealth.monitor.actions import ActionRunner
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.libvirt_connection import LibvirtConnection
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.registry import DomainRegistry, UnknownDomain
from vmhealth.spec import ProbeKind


class StatusView:
    def __init__(self, registry: DomainRegistry, connection: LibvirtConnection,
                 actions: ActionRunner) -> None:
        self._registry = registry
        self._connection = connection
        self._actions = actions

    def status(self) -> dict[str, Any]:
        """Every domain's entry, each exactly what domain_status() gives for it."""
        lanes = self._registry.lanes
        if lanes is not None:
            lanes.fold_all()  # the native lane's silent successes, for every domain
        domains = [monitor.to_dict() for monitor in
                   sorted(self._registry.monitors.values(), key=lambda m: m.name)]
        return {"libvirtConnected": self._connection.conn is not None, "domains": domains,
                "actionsInFlight": {uuid: p.to_dict()
                                    for uuid, p in self._actions.pending.items()}}

    def domain_status(self, key: str) -> dict[str, Any]:
        """One domain's entry, by UUID or name; UnknownDomain (a LookupError) if none."""
        monitor = self._registry.find(key)
        monitor.prober.fold_lanes()
        return monitor.to_dict()

    async def run_probe_once(self, key: str, kind: ProbeKind) -> ProbeResult:
        """Run one of the domain's probes now (`vmhealth probe`), outside its schedule."""
        monitor = self._registry.find(key)
        probe = monitor.spec.probes().get(kind)
        if probe is None:
            raise UnknownDomain(f"{monitor.name} has no {kind.value}")
        return await run_probe(probe, monitor.access)
