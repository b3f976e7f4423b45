"""The host monitor daemon: one asyncio process watching every domain with a health spec.

`Daemon` only builds the parts and runs them; each part lives in its own module:

- libvirt_connection.py: the libvirt connection (connect, keepalive, back-off,
  reconnect, close) and the two thread pools of blocking libvirt calls;
- registry.py: the adopted domains (adopt, keep, replace, drop a DomainMonitor);
- lifecycle_events.py: libvirt's domain events and the hook's spool nudges;
- liveness_policy.py: whether and how to act on a liveness failure;
- status_view.py: what the API publishes (`status`, `status DOMAIN`, `probe`).

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
import logging
import signal
from collections.abc import Awaitable
from typing import Any, Callable

from vmhealth.monitor.actions import ActionRunner
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.monitor.libvirt_connection import LibvirtConnection
from vmhealth.monitor.lifecycle_events import LifecycleEvents
from vmhealth.monitor.liveness_policy import LivenessPolicy
from vmhealth.monitor.logfmt import log_fields
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.native_lane import NativeLanes
from vmhealth.monitor.registry import DomainRegistry, UnknownDomain, default_prober_factory
from vmhealth.monitor.spool import SpoolWatcher
from vmhealth.monitor.status_view import StatusView
from vmhealth.spec import ProbeKind

__all__ = ["Daemon", "UnknownDomain", "serve"]

log = logging.getLogger("vmhealth.daemon")

ACTION_DRAIN_SECONDS = 600  # first SIGTERM: how long actions in flight may take
# How often per-domain leftovers of deleted domains are forgotten (forget_departed).
SWEEP_SECONDS = 600


class Daemon:
    """The composition root. `prober_factory(spec, access, listener, lanes=...)` builds
    each domain's probe engine (DomainProber unless told otherwise)."""

    def __init__(self, config: DaemonConfig, *,
                 prober_factory: Callable[..., Any] = default_prober_factory) -> None:
        self.config = config
        self.events = EventLog(config.event_buffer)
        self.metrics = Metrics()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop: asyncio.Event | None = None  # made on the loop, on first use
        self._force = False
        self.spool: SpoolWatcher | None = None
        self.connection = LibvirtConnection(
            config, events=self.events, metrics=self.metrics, spawn=self._spawn,
            stop_event=self._stop_event, on_connected=self._reconcile)
        self.actions = ActionRunner(
            self.events, self.connection.control_pool,
            initial=config.backoff_initial_seconds, maximum=config.backoff_max_seconds,
            reset_after=config.backoff_reset_seconds, on_action=self.metrics.count_action)
        self.registry = DomainRegistry(
            config, self.connection, events=self.events, metrics=self.metrics,
            prober_factory=prober_factory, on_liveness_failed=self._liveness_failed,
            pending_action=self.actions.pending.get)
        self.liveness = LivenessPolicy(self.registry, self.actions, events=self.events,
                                       spawn=self._spawn, is_stopping=self._is_stopping)
        self.lifecycle = LifecycleEvents(
            self.registry, self.actions, events=self.events, metrics=self.metrics,
            spec_defaults=config.spec_defaults, spawn=self._spawn,
            is_stopping=self._is_stopping)
        for event_id, callback in self.lifecycle.callbacks().items():
            self.connection.subscribe(event_id, callback)
        self.view = StatusView(self.registry, self.connection, self.actions)

    # ------------------------------------------------------------------ running
    async def start(self) -> None:
        """Everything but the API: connect (waiting for libvirt with back-off), adopt, watch."""
        self._stop_event()
        if self.registry.lanes is None:
            self.registry.lanes = NativeLanes.start(enabled=self.config.native_lane)
            if self.registry.lanes is not None:
                self.metrics.before_render.append(self.registry.lanes.fold_all)
        await self.connection.start()
        self.spool = SpoolWatcher(self.config.spool_dir, self.lifecycle.spool_present,
                                  self.lifecycle.spool_removed)
        self.spool.start()
        self._spawn(self._refresh_states_forever())

    async def run_until_stopped(self) -> None:
        await self._stop_event().wait()
        await self.shutdown()

    def install_signal_handlers_early(self) -> None:
        """Handle SIGTERM/SIGINT from now on (before start(), which may wait for libvirt)."""
        self._stop_event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)

    def request_stop(self) -> None:
        stop = self._stop_event()
        if stop.is_set():
            self.request_force_stop()
            return
        log.info("stopping: finishing liveness actions in flight (signal again to stop now)")
        stop.set()

    def request_force_stop(self) -> None:
        log.warning("stopping now")
        self._force = True
        self.actions.cancel_all()
        for task in list(self._tasks):
            task.cancel()

    async def shutdown(self) -> None:
        if self.spool is not None:
            self.spool.stop()
        for uuid in list(self.registry.monitors):
            await self.registry.drop(uuid, "daemon stopping", quiet=True)
        if not self._force:
            self.actions.stopping.set()
            await self.actions.wait_idle(ACTION_DRAIN_SECONDS)
        for task in list(self._tasks):
            task.cancel()
        self.events.close()
        if self.registry.lanes is not None:
            self.registry.lanes.close()  # every prober has stopped: no lane is left
        await self.connection.close()

    def _stop_event(self) -> asyncio.Event:
        if self._stop is None:
            self._stop = asyncio.Event()
        return self._stop

    def _is_stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ wiring
    async def _reconcile(self) -> None:
        await self.registry.reconcile()

    def _liveness_failed(self, monitor: DomainMonitor, result: ProbeResult) -> None:
        self.liveness.liveness_failed(monitor, result)

    async def _refresh_states_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + SWEEP_SECONDS
        while True:
            await asyncio.sleep(self.config.state_refresh_seconds)
            if self.connection.conn is not None:
                await self.registry.refresh_all()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_SECONDS
                    await self.forget_departed()

    async def forget_departed(self) -> None:
        """Forget what is kept per domain (metric series, locks, restart back-off) for
        domains that no longer exist on this host, every SWEEP_SECONDS, so a host that
        creates and deletes domains all day does not grow the daemon without end."""
        uuids = await self.registry.forget_departed()
        if uuids is not None:
            self.actions.retain(uuids)

    # ------------------------------------------------------------------ what the API reads
    @property
    def monitors(self) -> dict[str, DomainMonitor]:
        return self.registry.monitors

    @property
    def conn(self) -> Any:
        """The libvirt connection, None while disconnected."""
        return self.connection.conn

    @property
    def lanes(self) -> NativeLanes | None:
        return self.registry.lanes

    def find(self, key: str) -> DomainMonitor:
        return self.registry.find(key)

    def status(self) -> dict[str, Any]:
        return self.view.status()

    def domain_status(self, key: str) -> dict[str, Any]:
        return self.view.domain_status(key)

    async def run_probe_once(self, key: str, kind: ProbeKind) -> ProbeResult:
        return await self.view.run_probe_once(key, kind)


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
