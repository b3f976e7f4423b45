"""Define, start and talk to e2e test guests in the sandbox."""

from __future__ import annotations

import itertools
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import libvirt

from . import agent, domain_xml
from .domain_xml import GuestSpec
from .guest_image import GuestImage
from .sandbox import Sandbox
from .waiting import wait_until


@dataclass(eq=False)
class Guest:
    spec: GuestSpec
    console_log: Path
    # Returns the current connection: after a libvirtd restart the factory holds a
    # new one, and the guest's virDomain handle follows it.
    connection: Callable[[], libvirt.virConnect] = field(repr=False)
    started_at: float | None = None
    _dom: libvirt.virDomain | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dom(self) -> libvirt.virDomain:
        conn = self.connection()
        if self._dom is None or self._dom.connect() is not conn:
            self._dom = conn.lookupByName(self.name)
        return self._dom

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.dom.create()

    def wait_for_agent(self, timeout: float = 90) -> float:
        """Wait for guest-ping; return seconds since start()."""
        agent.wait_for_ping(self.dom, timeout=timeout)
        return time.monotonic() - (self.started_at or time.monotonic())

    def ping(self, timeout: int = 5) -> bool:
        return agent.ping(self.dom, timeout=timeout)

    def exec(self, path: str, *args: str, timeout: float = 30,
             stdin: bytes | None = None) -> agent.ExecResult:
        return agent.guest_exec(self.dom, path, list(args), timeout=timeout, stdin=stdin)

    def service_pid(self, service: str) -> int:
        """Pid of a service guest_init.sh started (httpd, tcp, watchdog, qemu-ga)."""
        result = self.exec("cat", f"/run/vmh/{service}.pid")
        if result.exitcode != 0:
            raise AssertionError(f"{service} is not running in {self.name}: {result.stderr}")
        return int(result.stdout.strip())

    def kill_service(self, service: str, signal: str = "TERM") -> None:
        pid = self.service_pid(service)
        result = self.exec("kill", f"-{signal}", str(pid))
        if result.exitcode != 0:
            raise AssertionError(f"kill {service} in {self.name} failed: {result.stderr}")

    def state(self) -> tuple[int, int]:
        state, reason = self.dom.state()
        return state, reason

    def wait_for_state(self, state: int, timeout: float = 30) -> int:
        """Wait for a libvirt domain state; return its reason."""
        def reached() -> tuple[int] | None:
            current, reason = self.dom.state()
            # A one-element tuple is truthy even when the reason is 0.
            return (reason,) if current == state else None

        return wait_until(reached, timeout=timeout,
                          what=f"{self.name} to reach state {state}")[0]

    def wait_for_port(self, port: int, timeout: float = 60, family: int = socket.AF_INET) -> None:
        host = self.spec.ipv4 if family == socket.AF_INET else self.spec.ipv6

        def connects() -> bool:
            with socket.create_connection((host, port), timeout=2):
                return True

        wait_until(connects, timeout=timeout, interval=0.5,
                   what=f"{self.name} to accept connections on port {port}")

    def console(self, tail: int | None = None) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no console log yet)"
        return "\n".join(text.splitlines()[-tail:]) if tail else text


class GuestFactory:
    """Creates guests with unique names, addresses and MACs; cleans them all up."""

    def __init__(self, sandbox: Sandbox, conn: libvirt.virConnect, image: GuestImage) -> None:
        self.sandbox = sandbox
        self.conn = conn
        self.image = image
        self.guests: list[Guest] = []
        self._index = itertools.count()

    def spec(self, name: str, **options) -> GuestSpec:
        index = next(self._index)
        if index > 200:
            raise RuntimeError("out of test addresses on the bridge")
        bridge = self.sandbox.bridge
        base = GuestSpec(
            name=name,
            mac=f"52:54:00:d5:00:{index:02x}",
            ipv4=bridge.guest_ipv4(index),
            ipv6=bridge.guest_ipv6(index),
            prefix4=bridge.prefix4,
            prefix6=bridge.prefix6,
        )
        return replace(base, **options)

    def define(self, spec: GuestSpec) -> Guest:
        console_log = self.sandbox.console_dir / f"{spec.name}.log"
        console_log.unlink(missing_ok=True)
        xml = domain_xml.build(spec, self.image, console_log, self.sandbox.bridge.name)
        dom = self.conn.defineXML(xml)
        guest = Guest(spec=spec, console_log=console_log, connection=lambda: self.conn,
                      _dom=dom)
        self.guests.append(guest)
        return guest

    def create(self, name: str, start: bool = True, **options) -> Guest:
        """Define (and by default start) a guest; do not wait for it to boot.

        Starting returns once QEMU runs, so a test that starts several guests first
        and waits afterwards boots them in parallel.
        """
        guest = self.define(self.spec(name, **options))
        if start:
            guest.start()
        return guest

    def components(self) -> list[str]:
        """The real components in use, as the running libvirtd reports them (not the
        versions some package claims), and the kernel the guests boot."""
        return [f"libvirtd {_version(self.conn.getLibVersion())}",
                f"QEMU {_version(self.conn.getVersion())} ({self.conn.getType()} driver)",
                f"guest kernel {self.image.kernel_version} ({self.image.kernel})"]

    def reconnect(self, conn: libvirt.virConnect) -> None:
        """Use a new connection (after a libvirtd restart) for all guests."""
        self.conn = conn

    def cleanup(self) -> None:
        for guest in self.guests:
            try:
                if guest.dom.isActive():
                    guest.dom.destroy()
                guest.dom.undefine()
            except libvirt.libvirtError:
                pass  # already gone (a test undefined it, or libvirtd restarted)
        self.guests.clear()


def _version(number: int) -> str:
    """libvirt's version integers are major * 1,000,000 + minor * 1,000 + release."""
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
