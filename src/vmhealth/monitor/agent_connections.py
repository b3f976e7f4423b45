"""Guest-agent calls on libvirt connections and threads of their own.

libvirtd serves at most `max_client_requests` (libvirtd.conf, default 5) calls of one
client connection at once and queues the others. A hung guest agent holds its call for
up to timeout + libvirt's guest-sync, so on the daemon's control connection a few hung
agents would queue the calls every guest depends on: state refreshes, adoption, the
liveness restart itself. And in a fixed thread pool, more hung agents than threads
would make other guests' calls wait for a thread, outside their timeouts.

So agent calls (docs/security.md, "Guest agents") run in an AgentLane:

- never on the control connection: on connections of their own, each carrying at most
  `per_connection` calls (set below max_client_requests), so libvirtd never queues one
  of them. When every open connection is full, another is opened; a connection idle
  for IDLE_CLOSE_SECONDS is closed while another stays open; a connection that died
  (libvirtd restarted, keepalive lost) takes no more calls and is replaced, with a
  back-off while opening fails; the daemon closes them all when it stops.
- each in a thread that starts at once: an idle one if there is one, else a new one
  (ElasticExecutor). LibvirtGuestAccess allows one agent call per guest in flight, so
  threads <= guests with a call pending (plus idle ones, which end after
  IDLE_THREAD_SECONDS), and no call waits for a thread or for a connection.

A call's timeout is libvirt's, measured on the agent itself; nothing here waits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future
from typing import Any, Callable

import libvirt
import libvirt_qemu

from vmhealth.excerpt import excerpt
from vmhealth.monitor.logfmt import log_fields

log = logging.getLogger("vmhealth.agent")

IDLE_THREAD_SECONDS = 60.0  # an idle agent thread ends after this long
IDLE_CLOSE_SECONDS = 60.0  # an idle extra agent connection is closed after this long
# libvirtd.conf's max_client_requests default is 5: one place left for the domain
# look-up and for anything libvirt itself sends on the connection.
DEFAULT_CALLS_PER_CONNECTION = 4
FIRST_RETRY_SECONDS = 1.0  # back-off after a failed open, doubling to reconnect_max
KEEPALIVE = (5, 3)  # as the control connection: seconds between, misses before dead
# Domain objects kept per connection (a look-up each saves one libvirt call per agent
# call); the least recently used go first, so departed domains do not pile up.
DOMAINS_PER_CONNECTION = 4096


class AgentConnectionError(Exception):
    """No libvirt connection for agent calls could be had: the call was not sent."""


class ElasticExecutor(Executor):
    """An Executor that never queues: a submission goes to a thread that is waiting for
    work, or to a new thread. Threads waiting longer than `idle_seconds` end.

    `_waiting` counts the threads blocked on the queue less the work already queued for
    them, so a submission starts a thread exactly when no waiting thread is left for it.
    """

    def __init__(self, name: str, idle_seconds: float = IDLE_THREAD_SECONDS) -> None:
        self._name = name
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting = 0
        self._threads: set[threading.Thread] = set()
        self._started = 0
        self._shut = False
        self.most_threads = 0  # the most threads alive at once so far

    @property
    def threads(self) -> int:
        """Threads alive now, busy or idle."""
        with self._lock:
            return len(self._threads)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.put((future, fn, args, kwargs))
            if self._waiting > 0:
                self._waiting -= 1  # that thread's: it takes this work
            else:
                self._started += 1
                thread = threading.Thread(target=self._worker, daemon=True,
                                          name=f"{self._name}-{self._started}")
                self._threads.add(thread)
                self.most_threads = max(self.most_threads, len(self._threads))
                thread.start()
        return future

    def _worker(self) -> None:
        try:
            while True:
                try:
                    item = self._work.get(timeout=self._idle_seconds)
                except queue.Empty:
                    with self._lock:
                        if not self._work.empty():
                            continue  # work came for a waiting thread: take it
                        self._waiting -= 1
                        return
                if item is None:
                    return  # shutdown
                future, fn, args, kwargs = item
                del item
                result = error = None
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        error = exc
                # Drop the call's references (domain objects) before waiting again.
                del fn, args, kwargs
                # Waiting again before the caller hears of the end: its next call (a
                # guest's next probe) finds this thread, not a new one.
                with self._lock:
                    shut = self._shut
                    if not shut:
                        self._waiting += 1
                if future.running():
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
                del future, result, error
                if shut:
                    return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            threads = list(self._threads)
            if cancel_futures:
                while True:
                    try:
                        item = self._work.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            for _ in threads:
                self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()


class _Connection:
    """One libvirt connection for agent calls, and the calls it carries now."""

    __slots__ = ("conn", "calls", "idle_since", "dead", "domains")

    def __init__(self, conn: libvirt.virConnect, now: float) -> None:
        self.conn = conn
        self.calls = 0
        self.idle_since = now
        self.dead = False
        self.domains: OrderedDict[str, libvirt.virDomain] = OrderedDict()


class AgentConnections:
    """libvirt connections for agent calls, opened as needed (see the module's doc).
    Thread-safe: every method may be called from any thread."""

    def __init__(self, uri: str, per_connection: int = DEFAULT_CALLS_PER_CONNECTION, *,
                 reconnect_max_seconds: float = 30.0,
                 idle_close_seconds: float = IDLE_CLOSE_SECONDS,
                 open_connection: Callable[[str], libvirt.virConnect] = libvirt.open,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_connection < 1:
            raise ValueError("per_connection must be at least 1")
        self._uri = uri
        self._per_connection = per_connection
        self._max_delay = reconnect_max_seconds
        self._idle_close = idle_close_seconds
        self._open_connection = open_connection
        self._clock = clock
        self._lock = threading.Lock()
        self._open: list[_Connection] = []
        self._delay = FIRST_RETRY_SECONDS
        self._retry_at = float("-inf")
        self._last_error = ""
        self._closed = False
        # The daemon's event loop, once known: libvirtaio (which runs libvirt's timers
        # and socket watches on it) is not thread-safe, so keepalive timers are set up
        # and connections closed on the loop, never in a call's thread.
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def command(self, dom: libvirt.virDomain, text: str, seconds: int) -> Any:
        """Blocking: qemuAgentCommand for `dom` (looked up by UUID on an agent
        connection) with `seconds` as libvirt's timeout; its reply text."""
        uuid = dom.UUIDString()  # local: no libvirt call
        slot = self._acquire()
        failed = False
        try:
            agent_dom = self._domain(slot, uuid)
            return libvirt_qemu.qemuAgentCommand(agent_dom, text, seconds, 0)
        except libvirt.libvirtError:
            failed = not _alive(slot.conn)
            raise
        finally:
            self._release(slot, failed)

    def close_all(self) -> None:
        """Close every connection and open no more (the daemon is stopping). Calls
        still in flight end on their own: their domain objects hold the connection."""
        with self._lock:
            self._closed = True
            slots, self._open = self._open, []
            for slot in slots:
                slot.domains.clear()  # domain objects hold their connection open
        for slot in slots:
            _close(slot)

    # ------------------------------------------------------------------ internals
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run fn(*args) on the daemon's loop (at once when already there); here when
        there is no loop (tests, tools) or it is closed."""
        loop = self.loop
        if loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                try:
                    loop.call_soon_threadsafe(fn, *args)
                    return
                except RuntimeError:
                    pass  # the loop is closed
        fn(*args)

    def _domain(self, slot: _Connection, uuid: str) -> libvirt.virDomain:
        with self._lock:
            dom = slot.domains.get(uuid)
            if dom is not None:
                slot.domains.move_to_end(uuid)
                return dom
        dom = slot.conn.lookupByUUIDString(uuid)
        with self._lock:
            slot.domains[uuid] = dom
            while len(slot.domains) > DOMAINS_PER_CONNECTION:
                slot.domains.popitem(last=False)
        return dom

    def _acquire(self) -> _Connection:
        closing: list[_Connection] = []
        try:
            with self._lock:
                if self._closed:
                    raise AgentConnectionError("the daemon is stopping")
                now = self._clock()
                self._sweep(now, closing)
                for slot in self._open:
                    if slot.calls < self._per_connection:
                        slot.calls += 1
                        return slot
                if now < self._retry_at:
                    raise AgentConnectionError(
                        f"no libvirt connection for guest-agent calls ({self._last_error}); "
                        f"next try in {self._retry_at - now:.0f} s")
        finally:
            for slot in closing:
                self._on_loop(_close, slot)
        return self._open_one()

    def _open_one(self) -> _Connection:
        """Blocking: a new connection carrying one call (the caller's)."""
        try:
            conn = self._open_connection(self._uri)
        except libvirt.libvirtError as exc:
            with self._lock:
                self._last_error = excerpt(exc.get_error_message() or str(exc))
                delay = self._delay
                self._retry_at = self._clock() + delay
                self._delay = min(delay * 2, self._max_delay)
            log.warning("cannot open a libvirt connection for guest-agent calls",
                        extra=log_fields(uri=self._uri, error=self._last_error,
                                         retry_seconds=delay))
            raise AgentConnectionError(f"cannot open a libvirt connection for guest-agent "
                                       f"calls: {self._last_error}") from None
        slot = _Connection(conn, self._clock())
        slot.calls = 1
        self._on_loop(_keep_alive, conn)
        try:
            conn.registerCloseCallback(_mark_dead, slot)
        except libvirt.libvirtError:
            pass
        with self._lock:
            self._delay, self._retry_at = FIRST_RETRY_SECONDS, float("-inf")
            closed = self._closed
            if not closed:
                self._open.append(slot)
                count = len(self._open)
        if closed:
            self._on_loop(_close, slot)
            raise AgentConnectionError("the daemon is stopping")
        log.info("opened a libvirt connection for guest-agent calls",
                 extra=log_fields(connections=count, calls_per_connection=self._per_connection))
        return slot

    def _release(self, slot: _Connection, failed: bool) -> None:
        closing: list[_Connection] = []
        with self._lock:
            slot.calls -= 1
            if failed:
                slot.dead = True
            now = self._clock()
            if slot.calls == 0:
                slot.idle_since = now
                if slot.dead and slot not in self._open:
                    closing.append(slot)  # taken out earlier: its last call has ended
            self._sweep(now, closing)
        for extra in closing:
            self._on_loop(_close, extra)

    def _sweep(self, now: float, closing: list[_Connection]) -> None:
        """Under the lock: take dead connections out (closed once their last call
        ends) and close idle ones while another stays open."""
        keep = []
        for slot in self._open:
            if slot.dead:
                if slot.calls == 0:
                    closing.append(slot)
                log.warning("a libvirt connection for guest-agent calls died; the next "
                            "call opens another", extra=log_fields(uri=self._uri))
                continue
            keep.append(slot)
        idle = [slot for slot in keep
                if slot.calls == 0 and now - slot.idle_since >= self._idle_close]
        if len(idle) == len(keep):
            idle = idle[1:]  # one stays open: the oldest
        for slot in idle:
            keep.remove(slot)
            closing.append(slot)
        self._open = keep


def _mark_dead(_conn: Any, _reason: int, slot: _Connection) -> None:
    # libvirt's close callback, from whichever thread noticed: only a flag.
    slot.dead = True


def _keep_alive(conn: libvirt.virConnect) -> None:
    try:
        conn.setKeepAlive(*KEEPALIVE)
    except libvirt.libvirtError:
        pass  # local drivers (test://) have no keepalive; they cannot drop either


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _close(slot: _Connection) -> None:
    slot.domains.clear()  # domain objects hold their connection open
    try:
        slot.conn.unregisterCloseCallback()
    except libvirt.libvirtError:
        pass
    try:
        slot.conn.close()
    except libvirt.libvirtError:
        pass  # already gone


class AgentLane(ElasticExecutor):
    """The daemon's agent lane: an ElasticExecutor whose calls use AgentConnections.
    LibvirtGuestAccess submits `command` to it (docs/security.md, "Guest agents")."""

    def __init__(self, connections: AgentConnections,
                 idle_seconds: float = IDLE_THREAD_SECONDS) -> None:
        super().__init__("vmhealth-agent", idle_seconds)
        self.connections = connections

    @classmethod
    def for_daemon(cls, config: Any) -> AgentLane:
        if getattr(config, "agent_threads", None) is not None:
            log.warning("[daemon] agent_threads is deprecated and ignored: each guest-agent "
                        "call gets a thread of its own (at most one per guest), on "
                        "libvirt connections of its own; remove the line (see "
                        "agent_calls_per_connection)",
                        extra=log_fields(agent_threads=config.agent_threads))
        return cls(AgentConnections(config.libvirt_uri, config.agent_calls_per_connection,
                                    reconnect_max_seconds=config.reconnect_max_seconds))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if self.connections.loop is None:  # run_in_executor submits from the loop
            try:
                self.connections.loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        return super().submit(fn, *args, **kwargs)

    def command(self, dom: libvirt.virDomain, text: str, seconds: int) -> Any:
        return self.connections.command(dom, text, seconds)

    def close_connections(self) -> None:
        self.connections.close_all()
