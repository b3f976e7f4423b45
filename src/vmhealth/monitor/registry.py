"""The adopted domains: one DomainMonitor (and its prober) per running domain with a spec.

Every way the daemon learns about a domain (reconciliation at connect, libvirt events,
the hook's spool files) ends in `adopt`, which asks libvirt for the domain's state and
spec and then adopts, keeps, replaces or drops its monitor; libvirt stays the source of
truth. A monitor of the same run (libvirt domain id) with the same spec keeps its
state, so a reconnect to libvirtd costs nothing. Adoption of one domain is serialised
by a per-domain lock; the locks of deleted domains are forgotten by `forget_departed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

import libvirt

from vmhealth.monitor.adoption import InvalidSpec, domain_spec, wants_monitoring
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.libvirt_connection import LibvirtConnection
from vmhealth.monitor.logfmt import log_fields
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.native_lane import NativeLanes
from vmhealth.monitor.prober import DomainProber

log = logging.getLogger("vmhealth.daemon")


class UnknownDomain(LookupError):
    pass


def default_prober_factory(spec: Any, access: Any, listener: Any, *,
                           lanes: NativeLanes | None = None) -> Any:
    return DomainProber(spec, access, listener, lanes=lanes)


def _run_age(spool_dir: str, uuid: str, why: str) -> float:
    """How long the domain has been running, as far as we can tell.

    The hook writes the spool file when the domain starts, so its age is the run's age;
    it keeps initialDelaySeconds from starting over when the daemon restarts. Without
    the file we assume the run just began: a longer wait, never an early action.
    """
    if why == "started":
        return 0.0
    try:
        return max(0.0, time.time() - os.stat(os.path.join(spool_dir, f"{uuid}.xml")).st_mtime)
    except OSError:
        return 0.0


class DomainRegistry:
    """`monitors` maps a domain's UUID to its monitor. `lanes` (the native probe lane
    the probers share, or None) is set by the daemon before the first adoption."""

    def __init__(self, config: DaemonConfig, connection: LibvirtConnection, *,
                 events: EventLog, metrics: Metrics,
                 prober_factory: Callable[..., Any],
                 on_liveness_failed: Callable[[DomainMonitor, ProbeResult], None],
                 pending_action: Callable[[str], Any]) -> None:
        self._config = config
        self._connection = connection
        self._events = events
        self._metrics = metrics
        self._prober_factory = prober_factory
        self._on_liveness_failed = on_liveness_failed
        self._pending_action = pending_action
        self.monitors: dict[str, DomainMonitor] = {}  # domain uuid -> monitor
        self.lanes: NativeLanes | None = None
        self._adopt_locks: dict[str, asyncio.Lock] = {}

    def find(self, key: str) -> DomainMonitor:
        """The monitor of the domain with this UUID or name; UnknownDomain if none."""
        monitor = self.monitors.get(key)
        if monitor is not None:
            return monitor
        for candidate in self.monitors.values():
            if candidate.name == key:
                return candidate
        raise UnknownDomain(key)

    async def reconcile(self) -> None:
        """Adopt every running domain with a spec; drop monitors of domains gone."""
        conn = self._connection.conn
        if conn is None:
            return
        domains = await self._connection.call(conn.listAllDomains,
                                              libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        seen = set()
        for dom in domains:
            seen.add(dom.UUIDString())  # name and UUID are local: no libvirt call
            try:
                await self.adopt(dom, "reconcile")
            except Exception as exc:  # noqa: BLE001 - one domain must not stop the others
                # adopt() reports what it foresees (an invalid spec, a domain gone); this
                # is anything else, from a domain's own definition say. Aborting here
                # would leave every later domain unmonitored and, at start(), make
                # systemd restart the daemon into the same failure forever.
                log.exception("cannot adopt domain; the others go on", extra=log_fields(
                    domain=dom.name(), error=f"{type(exc).__name__}: {exc}"))
        for uuid in list(self.monitors):
            if uuid not in seen:
                await self.drop(uuid, "no longer running")
        self._metrics.monitored.set(len(self.monitors))

    async def forget_departed(self) -> set[str] | None:
        """Forget the metric series and adoption locks of domains that no longer exist
        on this host; return the UUIDs that do (or are still monitored), None when
        libvirt cannot say. A sweep, not events: deletions while libvirt was
        unreachable count too."""
        conn = self._connection.conn
        if conn is None:
            return None
        try:
            domains = await self._connection.call(conn.listAllDomains, 0)
            defined = {(dom.UUIDString(), dom.name()) for dom in domains}
        except libvirt.libvirtError as exc:
            log.warning("cannot list domains", extra=log_fields(error=exc.get_error_message()))
            return None
        uuids = {uuid for uuid, _ in defined} | set(self.monitors)
        self._metrics.retain_domains({name for _, name in defined}
                                     | {m.name for m in self.monitors.values()})
        for uuid, lock in list(self._adopt_locks.items()):
            if uuid not in uuids and not lock.locked():
                del self._adopt_locks[uuid]
        return uuids

    async def adopt(self, dom: libvirt.virDomain, why: str, *, new_run: bool = False) -> None:
        uuid = dom.UUIDString()
        lock = self._adopt_locks.setdefault(uuid, asyncio.Lock())
        async with lock:
            await self._adopt_locked(dom, uuid, why, new_run)
        self._metrics.monitored.set(len(self.monitors))

    async def _adopt_locked(self, dom: libvirt.virDomain, uuid: str, why: str,
                            new_run: bool) -> None:
        call = self._connection.call
        name = dom.name()
        try:
            active = await call(dom.isActive)
            spec = await call(domain_spec, dom, self._config.spec_defaults) \
                if active else None
            run_id = await call(dom.ID) if active else -1
        except InvalidSpec as exc:
            self._events.record(name, "SpecInvalid", f"not monitored: {exc}")
            await self.drop(uuid, "invalid spec", quiet=True)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                log.warning("cannot read domain", extra=log_fields(
                    domain=name, error=exc.get_error_message()))
            await self.drop(uuid, "gone", quiet=True)
            return
        if not active or not wants_monitoring(spec):
            await self.drop(uuid, "no health spec" if active else "not running")
            return
        existing = self.monitors.get(uuid)
        if existing is not None and not new_run and existing.spec == spec \
                and existing.run_id == run_id:
            existing.access.dom = dom  # same run, same spec: keep its state (reconnect)
            return
        await self.drop(uuid, "spec changed" if existing else "", quiet=True)
        access = LibvirtGuestAccess(
            dom, agent_pool=self._connection.agent_pool,
            control_pool=self._connection.control_pool,
            address_refresh_seconds=self._config.address_refresh_seconds)
        try:
            await access.refresh_state()
            await call(access.prepare_agent)
        except libvirt.libvirtError:
            pass  # suppression_reason() says "state not known yet" until the next refresh
        monitor = DomainMonitor(uuid, run_id, spec, access, events=self._events,
                                metrics=self._metrics,
                                on_liveness_failed=self._on_liveness_failed,
                                pending_action=self._pending_action)
        monitor.attach(self._prober_factory(spec, access, monitor, lanes=self.lanes))
        self.monitors[uuid] = monitor
        # Jitter only for domains found running (daemon or libvirtd restart): many probes
        # would otherwise fire in lock-step. A fresh start is probed on its own schedule.
        monitor.prober.start(jitter_first_probe=why in ("reconcile", "hook"),
                             run_age_seconds=_run_age(self._config.spool_dir, uuid, why))
        kinds = ", ".join(kind.short for kind in spec.probes())
        paused = "; guest-agent ping probes paused" if spec.guest_agent_ping_paused else ""
        self._events.record(name, "Adopted", f"monitoring {kinds} ({why}){paused}",
                            reason=why)

    async def drop(self, uuid: str, reason: str, *, quiet: bool = False) -> None:
        monitor = self.monitors.pop(uuid, None)
        if monitor is None:
            return
        self._metrics.forget_domain(monitor.name)
        self._metrics.monitored.set(len(self.monitors))
        if monitor.prober is not None:
            await monitor.prober.stop()
        if not quiet:
            self._events.record(monitor.name, "Released", f"no longer monitored: {reason}",
                                reason=reason)

    async def adopt_uuid(self, uuid: str, why: str) -> None:
        conn = self._connection.conn
        if conn is None:
            return
        try:
            dom = await self._connection.call(conn.lookupByUUIDString, uuid)
        except libvirt.libvirtError:
            await self.drop(uuid, "gone")
            return
        await self.adopt(dom, why)

    async def refresh_state(self, monitor: DomainMonitor) -> None:
        """Re-read the domain's state; publish a readiness flip (a pause, a resume)."""
        try:
            await monitor.access.refresh_state()
        except libvirt.libvirtError:
            return  # gone or disconnected: events and reconcile deal with that
        monitor.readiness_changed()  # paused or resumed: not ready / ready again

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh_state(m) for m in list(self.monitors.values())))
