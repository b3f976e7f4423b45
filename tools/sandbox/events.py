"""libvirt's default event loop on a daemon thread, and a recorder of domain events.

virEventRegisterDefaultImpl must run before the connection whose events we want is
opened, so every connection the harness makes goes through connect() here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import libvirt

from .waiting import wait_until

_loop_lock = threading.Lock()
_loop_started = False


def _run_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def ensure_event_loop() -> None:
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # A daemon thread: it blocks in poll() forever and must not keep the
        # interpreter alive at exit.
        threading.Thread(target=_run_loop, name="libvirt-events", daemon=True).start()
        _loop_started = True


def _ignore_error(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; they are raised as
    libvirtError anyway, and waiting for a booting guest's agent produces dozens."""


def connect(uri: str) -> libvirt.virConnect:
    ensure_event_loop()
    libvirt.registerErrorHandler(_ignore_error, None)
    conn = libvirt.open(uri)
    # Notices a dead libvirtd (restart tests) instead of hanging on the socket.
    conn.setKeepAlive(5, 3)
    return conn


def watchdog_action_name(code: int) -> str:
    """"poweroff" for VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF, and so on."""
    prefix = "VIR_DOMAIN_EVENT_WATCHDOG_"
    for name in dir(libvirt):
        if name.startswith(prefix) and getattr(libvirt, name) == code:
            return name[len(prefix):].lower()
    return f"unknown({code})"


@dataclass(frozen=True)
class Event:
    domain: str
    kind: str  # "watchdog" or "lifecycle"
    code: int  # watchdog action, or lifecycle event
    detail: int = 0


class EventRecorder:
    """Records watchdog and lifecycle events of every domain on one connection."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._callback_ids: list[int] = []
        self._register(conn)

    def _register(self, conn: libvirt.virConnect) -> None:
        self._conn = conn
        self._callback_ids = [
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog, None),
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None),
        ]

    def reconnect(self, conn: libvirt.virConnect) -> None:
        """Listen on a new connection (after a libvirtd restart); events recorded so
        far are kept, those emitted while libvirtd was down are lost."""
        self.close()
        self._register(conn)

    def close(self) -> None:
        for callback_id in self._callback_ids:
            try:
                self._conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                pass  # the connection is already gone: nothing left to deregister
        self._callback_ids = []

    def _add(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    def _on_watchdog(self, _conn, dom, action, _opaque) -> None:
        self._add(Event(dom.name(), "watchdog", action))

    def _on_lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        self._add(Event(dom.name(), "lifecycle", event, detail))

    def events(self, domain: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self._events if domain is None or e.domain == domain]

    def wait_for(self, domain: str, kind: str, code: int | None = None,
                 timeout: float = 30) -> Event:
        def match() -> Event | None:
            for event in self.events(domain):
                if event.kind == kind and (code is None or event.code == code):
                    return event
            return None

        return wait_until(match, timeout=timeout, interval=0.1,
                          what=f"{kind} event {code} from {domain}")
