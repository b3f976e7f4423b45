"""The host monitor daemon: one asyncio process watching every domain with a health spec.

It learns about domains three ways, all leading to the same `adopt` (libvirt stays
the source of truth): a full reconciliation against libvirt at start and after every
reconnect, libvirt's domain events (through libvirtaio), and the hook's spool files.
It rebuilds everything from libvirt, so a restart of the daemon or of libvirtd loses
nothing; new probers start with liveness alive and need failureThreshold fresh
failures, so a restart never triggers an action on its own.

Stopping: the first SIGTERM/SIGINT stops probing and lets liveness actions in flight
finish (a restart's back-off ends early so no domain is left off); a second one stops
at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import libvirt

from vmhealth.domainxml import NAMESPACE
from vmhealth.monitor import coarse_timers
from vmhealth.monitor.actions import ActionRunner
from vmhealth.monitor.adoption import InvalidSpec, domain_spec, wants_monitoring
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.logfmt import log_fields
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.native_lane import NativeLanes
from vmhealth.monitor.prober import DomainProber
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.spool import SpoolWatcher
from vmhealth.spec import LivenessAction, ProbeKind

log = logging.getLogger("vmhealth.daemon")

WATCHDOG_ACTIONS = {
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE: "none",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_PAUSE: "pause",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET: "reset",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF: "poweroff",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_DEBUG: "dump",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI: "inject-nmi",
}
ACTION_DRAIN_SECONDS = 600  # first SIGTERM: how long actions in flight may take
# At stop: how long libvirt calls still running in the pools may take to end.
LIBVIRT_DRAIN_SECONDS = 10
# ...and how long libvirt may then take to let go of the event loop after close().
LOOP_SETTLE_SECONDS = 2
# How often per-domain leftovers of deleted domains are forgotten (forget_departed).
SWEEP_SECONDS = 600
KEEPALIVE = (5, 3)  # seconds between keepalives, misses before the connection is dead


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


async def _libvirt_loop_settled(seconds: float) -> None:
    """Run the loop until libvirt has let go of it (bounded): the connection's real
    close comes a few loop turns after close() (libvirt first flushes the deregistered
    event callbacks on a timer, which frees their hold on the connection), and then
    removes its socket watch, whose "free" callbacks are tasks of their own."""
    import libvirtaio

    impl = libvirtaio.getCurrentImpl()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while impl is not None and impl.descriptors and loop.time() < deadline:
        await asyncio.sleep(0.01)
    for _ in range(3):
        await asyncio.sleep(0)


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


class Daemon:
    def __init__(self, config: DaemonConfig, *,
                 prober_factory: Callable[..., Any] = default_prober_factory) -> None:
        self.config = config
        self.events = EventLog(config.event_buffer)
        self.metrics = Metrics()
        self.monitors: dict[str, DomainMonitor] = {}  # domain uuid -> monitor
        self.conn: libvirt.virConnect | None = None
        self._prober_factory = prober_factory
        self.agent_pool = ThreadPoolExecutor(config.agent_threads, "vmhealth-agent")
        self.control_pool = ThreadPoolExecutor(config.control_threads, "vmhealth-libvirt")
        self._adopt_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._callback_ids: list[int] = []
        self.actions: ActionRunner | None = None
        self._stop: asyncio.Event | None = None
        self._force = False
        self._reconnecting = False
        self.spool: SpoolWatcher | None = None
        self.connected: asyncio.Event | None = None  # created in start(), on the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the daemon's, set in start()
        self.lanes: NativeLanes | None = None  # the native probe lane, set in start()

    # ------------------------------------------------------------------ running
    async def start(self) -> None:
        """Everything but the API: connect (waiting for libvirt with back-off), adopt, watch."""
        import libvirtaio  # ships with libvirt-python
        if libvirtaio.getCurrentImpl() is None:
            libvirtaio.virEventRegisterAsyncIOImpl()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we log exceptions
        if self._stop is None:
            self._stop = asyncio.Event()
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self.config.native_lane and self.lanes is None:
            self.lanes = NativeLanes.start()
            if self.lanes is not None:
                self.metrics.before_render.append(self.lanes.fold_all)
        self.actions = ActionRunner(
            self.events, self.control_pool, initial=self.config.backoff_initial_seconds,
            maximum=self.config.backoff_max_seconds,
            reset_after=self.config.backoff_reset_seconds,
            on_action=self.metrics.count_action)
        await self._connect_with_backoff()
        self.spool = SpoolWatcher(self.config.spool_dir, self._spool_present,
                                  self._spool_removed)
        self.spool.start()
        self._spawn(self._refresh_states_forever())

    async def run_until_stopped(self) -> None:
        assert self._stop is not None
        await self._stop.wait()
        await self.shutdown()

    def install_signal_handlers_early(self) -> None:
        """Handle SIGTERM/SIGINT from now on (before start(), which may wait for libvirt)."""
        if self._stop is None:
            self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    def request_stop(self) -> None:
        assert self._stop is not None
        if self._stop.is_set():
            self.request_force_stop()
            return
        log.info("stopping: finishing liveness actions in flight (signal again to stop now)")
        self._stop.set()

    def request_force_stop(self) -> None:
        log.warning("stopping now")
        self._force = True
        if self.actions is not None:
            self.actions.cancel_all()
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self) -> None:
        if self.spool is not None:
            self.spool.stop()
        for uuid in list(self.monitors):
            await self._drop(uuid, "daemon stopping", quiet=True)
        if self.actions is not None and not self._force:
            self.actions.stopping.set()
            await self.actions.wait_idle(ACTION_DRAIN_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        self.events.close()
        if self.lanes is not None:
            self.lanes.close()  # every prober has stopped: no lane is left
        await self._close_libvirt(LIBVIRT_DRAIN_SECONDS)

    async def _close_libvirt(self, seconds: float) -> None:
        """Close the connection while the event loop still runs.

        libvirt talks to the loop through libvirtaio: a call still running in a pool
        thread (an agent command, a state query) updates its connection's socket
        watch, and the connection's real close (when its last domain object goes)
        removes the watch and its timers.  After asyncio.run() has closed the loop
        each of those is a traceback on stderr.  So: no new calls, wait (bounded)
        for the running ones, free the domain objects that only reference cycles
        still hold (an exception's traceback keeps its frames' domains), close, and
        let libvirtaio's last callbacks run.
        """
        loop = asyncio.get_running_loop()
        pools = (self.agent_pool, self.control_pool)
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        joined = asyncio.gather(*(loop.run_in_executor(None, pool.shutdown, True)
                                  for pool in pools))
        try:
            await asyncio.wait_for(joined, seconds)
        except asyncio.TimeoutError:
            log.warning("libvirt calls still running at stop", extra=log_fields(
                seconds=seconds))
        # Every prober has stopped: ticks still on the grid would do nothing, but
        # they hold their probers' domain handles.
        coarse_timers.SHARED.forget(loop)
        gc.collect()
        self._close_connection()
        await _libvirt_loop_settled(LOOP_SETTLE_SECONDS)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.control_pool, fn, *args)

    # ------------------------------------------------------------------ libvirt connection
    async def _connect_with_backoff(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._connect()
                return
            except libvirt.libvirtError as exc:
                log.warning("cannot connect to libvirt; retrying", extra=log_fields(
                    uri=self.config.libvirt_uri, error=exc.get_error_message(),
                    retry_seconds=delay))
            assert self._stop is not None
            try:  # sleep, but wake up at once when asked to stop
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self.config.reconnect_max_seconds)

    async def _connect(self) -> None:
        conn = await self._call(libvirt.open, self.config.libvirt_uri)
        try:
            conn.setKeepAlive(*KEEPALIVE)
        except libvirt.libvirtError:
            pass  # local drivers (test://) have no keepalive; they cannot drop either
        conn.registerCloseCallback(self._on_close, None)
        register = conn.domainEventRegisterAny
        self._callback_ids = [
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog, None),
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent, None),
            register(None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata,
                     None),
        ]
        self.conn = conn
        assert self.connected is not None
        self.connected.set()
        self.metrics.libvirt_connected.set(1)
        log.info("connected to libvirt", extra=log_fields(uri=self.config.libvirt_uri))
        await self.reconcile()

    def _close_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        for callback_id in self._callback_ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass  # the connection is already gone
        try:
            conn.unregisterCloseCallback()
            conn.close()
        except libvirt.libvirtError:
            pass

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        # libvirt calls this from whichever thread notices the closed connection: the
        # loop's event dispatch, or a pool thread whose call (a guest-agent command,
        # say) failed with it. Hand it to the loop; everything after runs there.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._connection_closed, reason)

    def _connection_closed(self, reason: int) -> None:
        if self._stop is None or self._stop.is_set() or self._reconnecting:
            return
        if self.connected is not None:
            self.connected.clear()
        self.metrics.libvirt_connected.set(0)
        self.conn = None
        self.events.record("", "LibvirtDisconnected",
                           f"connection to libvirt closed (reason {reason}); reconnecting")
        self._reconnecting = True
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self._connect_with_backoff()
            if self.conn is not None:
                self.events.record("", "LibvirtReconnected", "reconnected to libvirt")
        finally:
            self._reconnecting = False

    # ------------------------------------------------------------------ adoption
    async def reconcile(self) -> None:
        """Adopt every running domain with a spec; drop monitors of domains gone."""
        conn = self.conn
        if conn is None:
            return
        domains = await self._call(conn.listAllDomains, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
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
                await self._drop(uuid, "no longer running")
        self.metrics.monitored.set(len(self.monitors))

    async def forget_departed(self) -> None:
        """Forget what is kept per domain (metric series, locks, restart back-off) for
        domains that no longer exist on this host, every SWEEP_SECONDS (a sweep, not
        events: deletions while libvirt was unreachable count too), so a host that
        creates and deletes domains all day does not grow the daemon without end."""
        conn = self.conn
        if conn is None:
            return
        try:
            domains = await self._call(conn.listAllDomains, 0)
            defined = {(dom.UUIDString(), dom.name()) for dom in domains}
        except libvirt.libvirtError as exc:
            log.warning("cannot list domains", extra=log_fields(error=exc.get_error_message()))
            return
        uuids = {uuid for uuid, _ in defined} | set(self.monitors)
        self.metrics.retain_domains({name for _, name in defined}
                                    | {m.name for m in self.monitors.values()})
        for uuid, lock in list(self._adopt_locks.items()):
            if uuid not in uuids and not lock.locked():
                del self._adopt_locks[uuid]
        if self.actions is not None:
            self.actions.retain(uuids)

    async def adopt(self, dom: libvirt.virDomain, why: str, *, new_run: bool = False) -> None:
        uuid = dom.UUIDString()
        lock = self._adopt_locks.setdefault(uuid, asyncio.Lock())
        async with lock:
            await self._adopt_locked(dom, uuid, why, new_run)
        self.metrics.monitored.set(len(self.monitors))

    async def _adopt_locked(self, dom: libvirt.virDomain, uuid: str, why: str,
                            new_run: bool) -> None:
        name = dom.name()
        try:
            active = await self._call(dom.isActive)
            spec = await self._call(domain_spec, dom, self.config.spec_defaults) \
                if active else None
            run_id = await self._call(dom.ID) if active else -1
        except InvalidSpec as exc:
            self.events.record(name, "SpecInvalid", f"not monitored: {exc}")
            await self._drop(uuid, "invalid spec", quiet=True)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                log.warning("cannot read domain", extra=log_fields(
                    domain=name, error=exc.get_error_message()))
            await self._drop(uuid, "gone", quiet=True)
            return
        if not active or not wants_monitoring(spec):
            await self._drop(uuid, "no health spec" if active else "not running")
            return
        existing = self.monitors.get(uuid)
        if existing is not None and not new_run and existing.spec == spec \
                and existing.run_id == run_id:
            existing.access.dom = dom  # same run, same spec: keep its state (reconnect)
            return
        await self._drop(uuid, "spec changed" if existing else "", quiet=True)
        access = LibvirtGuestAccess(dom, agent_pool=self.agent_pool,
                                    control_pool=self.control_pool,
                                    address_refresh_seconds=self.config.address_refresh_seconds)
        try:
            await access.refresh_state()
            await self._call(access.prepare_agent)
        except libvirt.libvirtError:
            pass  # suppression_reason() says "state not known yet" until the next refresh
        monitor = DomainMonitor(uuid, run_id, spec, access, events=self.events,
                                metrics=self.metrics, on_liveness_failed=self._liveness_failed,
                                pending_action=self._pending_action)
        monitor.attach(self._prober_factory(spec, access, monitor, lanes=self.lanes))
        self.monitors[uuid] = monitor
        # Jitter only for domains found running (daemon or libvirtd restart): many probes
        # would otherwise fire in lock-step. A fresh start is probed on its own schedule.
        monitor.prober.start(jitter_first_probe=why in ("reconcile", "hook"),
                             run_age_seconds=_run_age(self.config.spool_dir, uuid, why))
        kinds = ", ".join(kind.short for kind in spec.probes())
        paused = "; guest-agent ping probes paused" if spec.guest_agent_ping_paused else ""
        self.events.record(name, "Adopted", f"monitoring {kinds} ({why}){paused}",
                           reason=why)

    async def _drop(self, uuid: str, reason: str, *, quiet: bool = False) -> None:
        monitor = self.monitors.pop(uuid, None)
        if monitor is None:
            return
        self.metrics.forget_domain(monitor.name)
        self.metrics.monitored.set(len(self.monitors))
        if monitor.prober is not None:
            await monitor.prober.stop()
        if not quiet:
            self.events.record(monitor.name, "Released", f"no longer monitored: {reason}",
                               reason=reason)

    async def adopt_uuid(self, uuid: str, why: str) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            dom = await self._call(conn.lookupByUUIDString, uuid)
        except libvirt.libvirtError:
            await self._drop(uuid, "gone")
            return
        await self.adopt(dom, why)

    # ------------------------------------------------------------------ spool
    def _spool_present(self, uuid: str) -> None:
        self._spawn(self.adopt_uuid(uuid, "hook"))

    def _spool_removed(self, uuid: str) -> None:
        # The hook removes the file when the domain stops; libvirt confirms it.
        self._spawn(self.adopt_uuid(uuid, "hook"))

    # ------------------------------------------------------------------ libvirt events
    def _on_lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, detail: int,
                      _opaque: Any) -> None:
        uuid = dom.UUIDString()
        self._follow_run_strategy(dom, event, detail)
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            self._spawn(self.adopt(dom, "started", new_run=True))
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._spawn(self._drop(uuid, f"stopped: {STOP_DETAILS.get(detail, detail)}"))
        elif event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            self._spawn(self._drop(uuid, "crashed"))
        elif event in (libvirt.VIR_DOMAIN_EVENT_DEFINED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED):
            self._spawn(self.adopt(dom, "redefined"))
        elif uuid in self.monitors:  # suspended, resumed, pmsuspended, shutdown begun
            self._spawn(self._refresh_state(self.monitors[uuid]))

    def _on_watchdog(self, _conn: Any, dom: libvirt.virDomain, action: int,
                     _opaque: Any) -> None:
        name = WATCHDOG_ACTIONS.get(action, str(action))
        self.metrics.count_watchdog(dom.name(), name)
        self.events.record(dom.name(), "Watchdog", f"watchdog fired; action {name}",
                           action=name)
        if self.actions is not None:  # a stop that follows is the watchdog's
            self.actions.stop_clues.watchdog(dom.UUIDString(), name)

    def _follow_run_strategy(self, dom: libvirt.virDomain, event: int, detail: int) -> None:
        """Run strategies (monitor/run_strategy.py): note what ends each run, and after
        a stop start the domain again when its spec's runStrategy asks for that (every
        domain: one with only a watchdog has no monitor). Nothing new while stopping."""
        actions = self.actions
        if actions is None:
            return
        uuid = dom.UUIDString()
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            actions.stop_clues.started(uuid)
        elif event == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN:
            actions.stop_clues.shutdown_begun(uuid, detail)
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            cause = actions.stop_clues.stopped(uuid, detail)
            if self._stop is not None and not self._stop.is_set():
                defaults = self.config.spec_defaults
                actions.start_again(dom, cause, lambda d: domain_spec(d, defaults))

    def _on_agent(self, _conn: Any, dom: libvirt.virDomain, state: int, reason: int,
                  _opaque: Any) -> None:
        connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        monitor = self.monitors.get(dom.UUIDString())
        if monitor is None:
            # Not ours to report: any guest can toggle its agent in a loop, and its
            # events would only crowd monitored domains' events out of the ring.
            return
        if connected:
            monitor.access.forget_addresses()  # the agent may know addresses now
            monitor.prober.recall_lanes()  # ... so no lane keeps probing the old ones
        self.events.record(dom.name(), "AgentConnected" if connected else "AgentDisconnected",
                           "guest agent " + ("connected" if connected else "disconnected"),
                           reason=reason)

    def _on_metadata(self, _conn: Any, dom: libvirt.virDomain, mtype: int, nsuri: str | None,
                     _opaque: Any) -> None:
        if mtype != libvirt.VIR_DOMAIN_METADATA_ELEMENT or nsuri in (None, NAMESPACE):
            self._spawn(self.adopt(dom, "metadata changed"))

    # ------------------------------------------------------------------ state, actions
    async def _refresh_state(self, monitor: DomainMonitor) -> None:
        try:
            await monitor.access.refresh_state()
        except libvirt.libvirtError:
            return  # gone or disconnected: events and reconcile deal with that
        monitor.readiness_changed()  # paused or resumed: not ready / ready again

    def _pending_action(self, uuid: str) -> Any:
        return self.actions.pending.get(uuid) if self.actions is not None else None

    async def _refresh_states_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_SECONDS
        while True:
            await asyncio.sleep(self.config.state_refresh_seconds)
            if self.conn is not None:
                await asyncio.gather(*(self._refresh_state(m) for m in list(self.monitors
                                                                             .values())))
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_SECONDS
                    await self.forget_departed()

    def _liveness_failed(self, monitor: DomainMonitor, result: ProbeResult) -> None:
        self._spawn(self._act_on_liveness(monitor, result))

    async def _act_on_liveness(self, monitor: DomainMonitor, result: ProbeResult) -> None:
        assert self.actions is not None and self._stop is not None
        name = monitor.name
        kind = monitor.failing_kind()
        if self._stop.is_set() or self.monitors.get(monitor.uuid) is not monitor:
            return  # stopping, or the domain was restarted/released meanwhile
        if self._pending_action(monitor.uuid) is not None:
            return  # the action in flight answers this failure too
        await self._refresh_state(monitor)  # never act on a stale "running"
        suppressed = monitor.access.suppression_reason()
        if suppressed:
            self.events.record(name, "ActionSkipped",
                               f"{kind.short} failed but the domain is {suppressed}: no action")
            return
        action = monitor.spec.on_liveness_failure
        self.events.record(name, "LivenessFailed", f"{kind.short} failed: {result.message}; "
                           f"action {action.value}", probe=kind.short, action=action.value)
        if action is LivenessAction.NONE:
            return
        probe = monitor.spec.probes()[kind]
        task = self.actions.start(monitor.access.dom, action,
                                  monitor.spec.grace_period_for(probe), result.message)
        if task is None:
            return
        monitor.readiness_changed()  # not ready while the action runs
        task.add_done_callback(lambda _task: monitor.readiness_changed())
        if action is LivenessAction.RESET:
            # A reset is a new boot without stop/start events: probe it afresh.
            await task
            self._spawn(self.adopt(monitor.access.dom, "reset", new_run=True))

    # ------------------------------------------------------------------ API queries
    def find(self, key: str) -> DomainMonitor:
        monitor = self.monitors.get(key)
        if monitor is not None:
            return monitor
        for candidate in self.monitors.values():
            if candidate.name == key:
                return candidate
        raise UnknownDomain(key)

    def _fold_lanes(self) -> None:
        """Bring the native lane's silent successes into the published status."""
        if self.lanes is not None:
            self.lanes.fold_all()

    def status(self) -> dict[str, Any]:
        """Every domain's entry, each exactly what domain_status() gives for it."""
        self._fold_lanes()
        pending = self.actions.pending if self.actions else {}
        domains = [monitor.to_dict()
                   for monitor in sorted(self.monitors.values(), key=lambda m: m.name)]
        return {"libvirtConnected": self.conn is not None, "domains": domains,
                "actionsInFlight": {uuid: p.to_dict() for uuid, p in pending.items()}}

    def domain_status(self, key: str) -> dict[str, Any]:
        monitor = self.find(key)
        monitor.prober.fold_lanes()
        return monitor.to_dict()

    async def run_probe_once(self, key: str, kind: ProbeKind) -> ProbeResult:
        monitor = self.find(key)
        probe = monitor.spec.probes().get(kind)
        if probe is None:
            raise UnknownDomain(f"{monitor.name} has no {kind.value}")
        return await run_probe(probe, monitor.access)


async def serve(config: DaemonConfig, **daemon_options: Any) -> None:
    """Run the daemon and its API until SIGTERM/SIGINT."""
    from vmhealth.monitor.api import ApiServer  # aiohttp: only the daemon needs it
    from vmhealth.monitor.web_listener import web_listener

    daemon = Daemon(config, **daemon_options)
    daemon.install_signal_handlers_early()
    api = ApiServer(daemon, config.socket_path, socket_group=config.socket_group,
                    probe_group=config.probe_group)
    address = config.tcp_address
    web = web_listener(daemon, address, config.web_config_file) if address else None
    await api.start()
    if web is not None:
        await web.start()
    log.info("API listening", extra=log_fields(
        socket=config.socket_path,
        tcp=f"{web.scheme}://{config.tcp_listen}" if web is not None else "off"))
    try:
        await daemon.start()
        await daemon.run_until_stopped()
    finally:
        if web is not None:
            await web.stop()
        await api.stop()
