"""The ways bench_agent_ping.py reaches qemu-ga, each as `round(count) -> failures`.

- DaemonPath: the daemon's own objects and code, built as the daemon builds them: one
  asyncio loop (libvirtaio registered on it), a connection opened in the control pool
  with the daemon's keepalive, LibvirtGuestAccess on the daemon's two thread pools of
  the configured sizes, and vmhealth.monitor.probes.run_probe on a guestAgentPing
  probe, one probe at a time as one domain's prober runs them. The loop runs all the
  time in its own thread (as the daemon's does); the measuring thread only waits.
- bare_agent_command / bare_get_time: blocking calls in a loop on the daemon's
  connection, no asyncio and no pools: what libvirt itself costs (informational).
- virsh_round: one `virsh qemu-agent-command` process per ping.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import libvirt
import libvirt_qemu

from vmhealth import spec
from vmhealth.monitor.agent_connections import AgentLane
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.libvirt_connection import KEEPALIVE
from vmhealth.monitor.probes import run_probe

PING = json.dumps({"execute": "guest-ping"})
GET_TIME = json.dumps({"execute": "guest-get-time"})
# A generous timeout: a TCG guest on a loaded 2-core host can take over a second, and a
# timed-out probe would measure nothing. The timeout does not change the work done.
PROBE = spec.Probe(handler=spec.GuestAgentPing(), timeout_seconds=5)
AGENT_SECONDS = 5
START_TIMEOUT = 60.0
ROUND_TIMEOUT = 600.0

Round = Callable[[int], int]


class DaemonPath:
    """The daemon's probe path for one domain, on a loop thread of its own."""

    def __init__(self, uri: str) -> None:
        config = DaemonConfig(libvirt_uri=uri)
        # Exactly LibvirtConnection's pools (monitor/libvirt_connection.py): agent calls
        # on connections and threads of their own.
        self.agent_pool = AgentLane.for_daemon(config)
        self.control_pool = ThreadPoolExecutor(config.control_threads, "vmhealth-libvirt")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vmhealth-loop",
                                        daemon=True)
        self._thread.start()
        self.conn: libvirt.virConnect | None = None
        self.access: LibvirtGuestAccess | None = None
        self.last_failure = ""
        self._run(self._connect(uri), START_TIMEOUT)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self, uri: str) -> None:
        """As LibvirtConnection.start/connect: libvirtaio (registered before any connection is
        opened: one event implementation a process), the connection opened in the
        control pool, the daemon's keepalive."""
        import libvirtaio

        if libvirtaio.getCurrentImpl() is None:
            libvirtaio.virEventRegisterAsyncIOImpl()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        loop = asyncio.get_running_loop()
        conn = await loop.run_in_executor(self.control_pool, libvirt.open, uri)
        conn.setKeepAlive(*KEEPALIVE)
        self.conn = conn

    async def _adopt(self, domain_name: str) -> None:
        assert self.conn is not None
        loop = asyncio.get_running_loop()
        dom = await loop.run_in_executor(self.control_pool, self.conn.lookupByName,
                                         domain_name)
        self.access = LibvirtGuestAccess(dom, agent_pool=self.agent_pool,
                                         control_pool=self.control_pool)
        await self.access.refresh_state()  # as DomainRegistry.adopt does once per domain

    def adopt(self, domain_name: str) -> None:
        """Build the domain's LibvirtGuestAccess as DomainRegistry.adopt does."""
        self._run(self._adopt(domain_name), START_TIMEOUT)

    async def _probe_round(self, count: int, period: float) -> int:
        loop = asyncio.get_running_loop()
        start = loop.time()
        failures = 0
        for index in range(count):
            if period > 0:  # start probe i at start + i * period, as a prober's timer would
                await asyncio.sleep(max(0.0, start + index * period - loop.time()))
            result = await run_probe(PROBE, self.access)
            if result.outcome is not Outcome.SUCCESS:
                failures += 1
                self.last_failure = result.message
        return failures

    async def _command_round(self, command: dict[str, Any], count: int,
                             period: float) -> int:
        assert self.access is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(count):
            if period > 0:
                await asyncio.sleep(max(0.0, start + index * period - loop.time()))
            await self.access.agent_command(dict(command), PROBE.timeout_seconds)
        return 0

    def command_round(self, command: dict[str, Any], period: float = 0.0) -> Round:
        """GuestAccess.agent_command(command) without the probe around it (informational:
        what the daemon would pay for another agent command)."""
        return lambda count: self._run(self._command_round(command, count, period),
                                       ROUND_TIMEOUT)

    def probe_round(self, count: int, period: float = 0.0) -> int:
        """`count` guestAgentPing probes, one after another (one every `period` seconds
        if given); returns the failures."""
        return self._run(self._probe_round(count, period), ROUND_TIMEOUT)

    def paced(self, period: float) -> Round:
        return lambda count: self.probe_round(count, period)

    @property
    def dom(self) -> libvirt.virDomain:
        assert self.access is not None
        return self.access.dom

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.agent_pool.shutdown(wait=False, cancel_futures=True)
        self.agent_pool.close_connections()
        self.control_pool.shutdown(wait=False, cancel_futures=True)


def bare_agent_command(dom: libvirt.virDomain, command: str) -> Round:
    def run(count: int) -> int:
        for _ in range(count):
            libvirt_qemu.qemuAgentCommand(dom, command, AGENT_SECONDS, 0)
        return 0
    return run


def bare_get_time(dom: libvirt.virDomain) -> Round:
    """virDomainGetTime: guest-get-time through a libvirt API of its own."""
    def run(count: int) -> int:
        for _ in range(count):
            dom.getTime()
        return 0
    return run


def virsh_round(uri: str, domain_name: str) -> Round:
    argv = ["virsh", "-c", uri, "qemu-agent-command", domain_name, PING]

    def run(count: int) -> int:
        failures = 0
        for _ in range(count):
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
            failures += done.returncode != 0
        return failures
    return run
