"""The daemon's one connection to libvirtd: open, keepalive, back-off, reconnect, close.

It owns the connection object and the two bounded thread pools every blocking libvirt
call runs in (guest-agent calls; other libvirt calls). It registers the domain event
callbacks it is given (lifecycle_events.py supplies them) and, after every connect,
calls `on_connected` (the registry's full reconciliation). When libvirtd closes the
connection (keepalive 5 s x 3) it reconnects with back-off, 1 s doubling up to
`reconnect_max_seconds`. At stop it closes everything while the event loop still runs,
so libvirt's last callbacks through libvirtaio find a live loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import libvirt

from vmhealth.monitor import coarse_timers
from vmhealth.monitor.agent_connections import AgentLane
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.logfmt import log_fields
from vmhealth.monitor.metrics import Metrics

log = logging.getLogger("vmhealth.daemon")

KEEPALIVE = (5, 3)  # seconds between keepalives, misses before the connection is dead
# At stop: how long libvirt calls still running in the pools may take to end.
LIBVIRT_DRAIN_SECONDS = 10
# ...and how long libvirt may then take to let go of the event loop after close().
LOOP_SETTLE_SECONDS = 2


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


class LibvirtConnection:
    """`conn` is None while disconnected; `connected` is set while connected."""

    def __init__(self, config: DaemonConfig, *, events: EventLog, metrics: Metrics,
                 spawn: Callable[[Awaitable[Any]], Any],
                 stop_event: Callable[[], asyncio.Event],
                 on_connected: Callable[[], Awaitable[None]]) -> None:
        self.uri = config.libvirt_uri
        self._reconnect_max_seconds = config.reconnect_max_seconds
        self._events = events
        self._metrics = metrics
        self._spawn = spawn
        self._stop_event = stop_event  # set when the daemon stops: no more reconnects
        self._on_connected = on_connected
        self.conn: libvirt.virConnect | None = None
        # Agent calls: a thread each, on libvirt connections of their own (never conn).
        self.agent_pool = AgentLane.for_daemon(config)
        self.control_pool = ThreadPoolExecutor(config.control_threads, "vmhealth-libvirt")
        self.connected: asyncio.Event | None = None  # created in start(), on the loop
        self._loop: asyncio.AbstractEventLoop | None = None  # the daemon's, set in start()
        self._subscriptions: list[tuple[int, Callable[..., None]]] = []
        self._callback_ids: list[int] = []
        self._reconnecting = False

    def subscribe(self, event_id: int, callback: Callable[..., None]) -> None:
        """Register `callback` for libvirt domain event `event_id` on every connection."""
        self._subscriptions.append((event_id, callback))

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking libvirt call (not a guest-agent one), in the control pool."""
        return await asyncio.get_running_loop().run_in_executor(self.control_pool, fn, *args)

    async def start(self) -> None:
        """Connect, waiting for libvirt with back-off (until the daemon is asked to stop)."""
        import libvirtaio  # ships with libvirt-python
        if libvirtaio.getCurrentImpl() is None:
            libvirtaio.virEventRegisterAsyncIOImpl()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # we log exceptions
        self.connected = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await self.connect_with_backoff()

    async def connect_with_backoff(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.connect()
                return
            except libvirt.libvirtError as exc:
                log.warning("cannot connect to libvirt; retrying", extra=log_fields(
                    uri=self.uri, error=exc.get_error_message(), retry_seconds=delay))
            try:  # sleep, but wake up at once when asked to stop
                await asyncio.wait_for(self._stop_event().wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self._reconnect_max_seconds)

    async def connect(self) -> None:
        conn = await self.call(libvirt.open, self.uri)
        try:
            conn.setKeepAlive(*KEEPALIVE)
        except libvirt.libvirtError:
            pass  # local drivers (test://) have no keepalive; they cannot drop either
        conn.registerCloseCallback(self.on_close, None)
        self._callback_ids = [conn.domainEventRegisterAny(None, event_id, callback, None)
                              for event_id, callback in self._subscriptions]
        self.conn = conn
        assert self.connected is not None
        self.connected.set()
        self._metrics.libvirt_connected.set(1)
        log.info("connected to libvirt", extra=log_fields(uri=self.uri))
        await self._on_connected()

    def close_connection(self) -> None:
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

    def on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        # libvirt calls this from whichever thread notices the closed connection: the
        # loop's event dispatch, or a pool thread whose call (a guest-agent command,
        # say) failed with it. Hand it to the loop; everything after runs there.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._connection_closed, reason)

    def _connection_closed(self, reason: int) -> None:
        if self._stop_event().is_set() or self._reconnecting:
            return
        if self.connected is not None:
            self.connected.clear()
        self._metrics.libvirt_connected.set(0)
        self.conn = None
        self._events.record("", "LibvirtDisconnected",
                            f"connection to libvirt closed (reason {reason}); reconnecting")
        self._reconnecting = True
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self.connect_with_backoff()
            if self.conn is not None:
                self._events.record("", "LibvirtReconnected", "reconnected to libvirt")
        finally:
            self._reconnecting = False

    async def close(self, seconds: float = LIBVIRT_DRAIN_SECONDS) -> None:
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
        self.close_connection()
        self.agent_pool.close_connections()
        await _libvirt_loop_settled(LOOP_SETTLE_SECONDS)
