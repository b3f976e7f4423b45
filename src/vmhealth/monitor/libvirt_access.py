"""GuestAccess implemented with libvirt: agent commands, guest addresses, suppression.

Every libvirt call here blocks its thread, so each runs in a bounded thread pool and
never on the event loop: agent commands in one pool (each with a positive timeout, so
a hung guest holds one worker for at most that long), cheap control calls (state,
addresses) in another, so a flood of slow agents cannot starve state refreshes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu

from vmhealth.monitor.interfaces import AgentError, AgentUnavailable

# Paused reasons during which a failing probe says nothing about the guest's health
# (KubeVirt's list): the guest is stopped on purpose and will run again.
SUPPRESSING_PAUSE_REASONS = {
    libvirt.VIR_DOMAIN_PAUSED_USER: "paused by the user",
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "paused for migration",
    libvirt.VIR_DOMAIN_PAUSED_SAVE: "paused while saving",
    libvirt.VIR_DOMAIN_PAUSED_DUMP: "paused for a core dump",
    libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT: "paused for a snapshot",
    libvirt.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: "paused after reverting to a snapshot",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting up",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "paused in post-copy migration",
}
# Jobs during which probes may fail for reasons of the host, not the guest.
SUPPRESSING_JOBS = {
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT: "migrating out",
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN: "migrating in",
    libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE: "saving",
    libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT: "taking a snapshot",
    libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_REVERT: "reverting to a snapshot",
    libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP: "dumping core",
}
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
# libvirt error codes meaning "no agent to talk to right now".
AGENT_UNAVAILABLE_CODES = {
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_OPERATION_INVALID,  # domain not running
    libvirt.VIR_ERR_NO_DOMAIN,
    getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", -1),
    getattr(libvirt, "VIR_ERR_AGENT_UNSYNCED", -1),
}
ADDRESS_SOURCES = (
    libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
    libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
    libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
)
EMPTY_ADDRESS_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class DomainState:
    state: int
    reason: int
    job_operation: int | None = None  # VIR_DOMAIN_JOB_OPERATION_*, None: no job

    @property
    def name(self) -> str:
        return STATE_NAMES.get(self.state, f"state {self.state}")


def suppression_for(state: DomainState | None) -> str | None:
    """Why probe failures must not count in `state`, or None when they count."""
    if state is None:
        return "domain state not known yet"
    if state.job_operation in SUPPRESSING_JOBS:
        return SUPPRESSING_JOBS[state.job_operation]
    return _suppression_by_state(state.state, state.reason)


def _suppression_by_state(state: int, reason: int) -> str | None:
    if state == libvirt.VIR_DOMAIN_PAUSED:
        # I/O error, crash, watchdog and post-copy failure pauses are real trouble.
        return SUPPRESSING_PAUSE_REASONS.get(reason)
    if state in (libvirt.VIR_DOMAIN_SHUTDOWN, libvirt.VIR_DOMAIN_SHUTOFF):
        return "not running"  # stopping on purpose; never act on it
    return None


def read_state(dom: libvirt.virDomain) -> DomainState:
    """Blocking: the domain's state and its current job (if the driver reports jobs).

    The job is asked for only when the state alone lets failures count: on a
    migration's destination the domain is paused for the incoming migration, and
    libvirt answers every job query there with an error in its log ("migration
    statistics are available only on the source host"), twice a second per domain.
    """
    state, reason = dom.state()
    if _suppression_by_state(state, reason) is not None:
        return DomainState(state, reason)
    job_operation = None
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        stats = {}  # drivers without job stats (the test driver): no job known
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
        job_operation = stats.get("operation")
    return DomainState(state, reason, job_operation)


def _agent_error(exc: libvirt.libvirtError, command: str) -> Exception:
    message = exc.get_error_message() or str(exc)
    if exc.get_error_code() in AGENT_UNAVAILABLE_CODES:
        return AgentUnavailable(message)
    if "has been disabled" in message or "not allowed" in message:
        return AgentError(f"the guest agent refuses {command}: {message}; allow it in the "
                          "guest's qemu-ga configuration (allow-rpcs/block-rpcs) and restart "
                          "qemu-guest-agent", blocked=True)
    return AgentError(message)


def _sorted_addresses(found: list[str]) -> list[str]:
    """IPv4 before IPv6, duplicates dropped; loopback and link-local left out."""
    usable = []
    for text in dict.fromkeys(found):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        usable.append(address)
    usable.sort(key=lambda a: a.version)  # stable: keeps source order within a family
    return [str(a) for a in usable]


def read_addresses(dom: libvirt.virDomain) -> list[str]:
    """Blocking: the guest's addresses from every source that answers."""
    found: list[str] = []
    for source in ADDRESS_SOURCES:
        try:
            interfaces = dom.interfaceAddresses(source, 0) or {}
        except libvirt.libvirtError:
            continue  # no lease network, no agent, no ARP entry: try the next source
        for info in interfaces.values():
            found += [addr["addr"] for addr in info.get("addrs") or [] if addr.get("addr")]
    return _sorted_addresses(found)


class LibvirtGuestAccess:
    """GuestAccess for one domain; `dom` is replaced when the daemon reconnects."""

    def __init__(self, dom: libvirt.virDomain, *, agent_pool: Executor, control_pool: Executor,
                 address_refresh_seconds: float = 30.0) -> None:
        self.dom = dom
        self.name = dom.name()
        self.state: DomainState | None = None
        self._agent_pool = agent_pool
        self._control_pool = control_pool
        self._refresh = address_refresh_seconds
        self._addresses: list[str] = []
        self._addresses_at = float("-inf")
        self._address_lock = asyncio.Lock()

    async def addresses(self) -> list[str]:
        cached = self.cached_addresses()
        if cached is not None:  # the common case: no lock, no await
            return cached
        async with self._address_lock:
            if self._addresses_stale():  # nobody refreshed them while we waited
                loop = asyncio.get_running_loop()
                self._addresses = await loop.run_in_executor(
                    self._control_pool, read_addresses, self.dom)
                self._addresses_at = time.monotonic()
            return list(self._addresses)

    def cached_addresses(self) -> list[str] | None:
        if self._addresses_stale():
            return None
        return list(self._addresses)

    def addresses_valid_until(self) -> float:
        # No address yet: look again soon, not only at the next full refresh.
        lifetime = (self._refresh if self._addresses
                    else min(self._refresh, EMPTY_ADDRESS_RETRY_SECONDS))
        return self._addresses_at + lifetime

    def _addresses_stale(self) -> bool:
        return time.monotonic() >= self.addresses_valid_until()

    def forget_addresses(self) -> None:
        """Look addresses up again at the next probe (agent reconnected, domain restarted)."""
        self._addresses_at = float("-inf")

    async def agent_command(self, command: dict[str, Any], timeout: float) -> Any:
        # libvirt treats 0 and negative values as "no wait" / "block forever": never pass them.
        seconds = max(1, int(round(timeout)))
        text = json.dumps(command)
        name = str(command.get("execute", "?"))
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(
                self._agent_pool, libvirt_qemu.qemuAgentCommand, self.dom, text, seconds, 0)
        except libvirt.libvirtError as exc:
            raise _agent_error(exc, name) from None
        try:
            decoded = json.loads(reply)
        except (TypeError, ValueError):
            raise AgentError(f"the guest agent's reply to {name} is not JSON") from None
        if isinstance(decoded, dict) and "error" in decoded:
            error = decoded["error"] if isinstance(decoded["error"], dict) else {}
            raise AgentError(str(error.get("desc", "agent error")),
                             error_class=str(error.get("class", "")))
        return decoded.get("return") if isinstance(decoded, dict) else None

    async def refresh_state(self) -> DomainState:
        loop = asyncio.get_running_loop()
        self.state = await loop.run_in_executor(self._control_pool, read_state, self.dom)
        return self.state

    def suppression_reason(self) -> str | None:
        return suppression_for(self.state)
