"""GuestAccess implemented with libvirt: agent commands, guest addresses, suppression.

Every libvirt call here blocks its thread, so each runs in a thread, never on the
event loop: agent calls (commands, and the agent's part of an address look-up) in the
daemon's AgentLane (agent_connections.py: a thread each, at once, on libvirt
connections of their own), at most one per guest in flight, each with a positive
timeout; cheap control calls (state, leases, ARP) in the bounded control pool on the
control connection, so a flood of slow agents can starve neither state refreshes,
adoption and liveness actions, nor another guest's agent call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable

import libvirt
import libvirt_qemu

from vmhealth.excerpt import excerpt
from vmhealth.monitor.agent_connections import AgentConnectionError, AgentLane
from vmhealth.monitor.guest_addresses import (
    DomainNics,
    agent_entries,
    libvirt_entries,
    probe_targets,
    read_nics,
)
from vmhealth.monitor.interfaces import (
    AGENT_SYNC_SECONDS,
    AgentBusy,
    AgentError,
    AgentUnavailable,
    NoVerdict,
)

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
EMPTY_ADDRESS_RETRY_SECONDS = 2.0
GUEST_INTERFACES = {"execute": "guest-network-get-interfaces"}
ADDRESS_AGENT_TIMEOUT = 5  # seconds the agent's part of an address look-up may take
# How long an address look-up waits for this guest's agent call in flight to end before
# it gives up asking the agent. Without a wait, a guest's exec probe that ticks with its
# HTTP/TCP probe holds the slot at every look-up, and those probes starve on "addresses
# not known yet" (seen for 28 s after a guest started on a new host). One look-up per
# guest waits at a time (the address lock), so waits never pile up behind a hung agent.
ADDRESS_SLOT_WAIT_SECONDS = 2.0
# How much longer than timeout + guest-sync libvirt may take to give its verdict on an
# agent call before the probe stops waiting for it (NoVerdict).
ANSWER_SLACK_SECONDS = 1.0
# libvirt's own bound on the agent calls of a monitored domain that take no timeout of
# their own (virDomainAgentSetResponseTimeout). Long enough for a guest's fsfreeze
# during a backup; short enough that a hung agent frees libvirtd's threads.
AGENT_RESPONSE_TIMEOUT_SECONDS = 30


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


# A live migration pauses its guest for its last moments: that is not "paused" to an
# operator or a load balancer (KubeVirt keeps a migrating VMI ready too).
MIGRATION_PAUSES = (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)


def paused_reason(state: DomainState | None) -> str | None:
    """"paused by the user" (etc.) while the domain is paused, None otherwise: a paused
    guest serves nothing, so it is not ready, whatever its last probe said."""
    if state is None or state.state != libvirt.VIR_DOMAIN_PAUSED:
        return None
    if state.reason in MIGRATION_PAUSES:
        return None
    return SUPPRESSING_PAUSE_REASONS.get(state.reason, "paused")


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
    message = excerpt(exc.get_error_message() or str(exc))  # may quote the guest
    if exc.get_error_code() in AGENT_UNAVAILABLE_CODES:
        return AgentUnavailable(message)
    if "has been disabled" in message or "not allowed" in message:
        return AgentError(f"the guest agent refuses {command}: {message}; allow it in the "
                          "guest's qemu-ga configuration (allow-rpcs/block-rpcs) and restart "
                          "qemu-guest-agent", blocked=True)
    return AgentError(message)


def decode_agent_reply(reply: Any, name: str) -> Any:
    """The "return" value of an agent reply; AgentError for an error or garbage."""
    try:
        decoded = json.loads(reply)
    except (TypeError, ValueError, RecursionError):
        raise AgentError(f"the guest agent's reply to {name} is not JSON") from None
    if isinstance(decoded, dict) and "error" in decoded:
        error = decoded["error"] if isinstance(decoded["error"], dict) else {}
        raise AgentError(excerpt(error.get("desc", "agent error")),
                         error_class=excerpt(error.get("class", ""), 64))
    return decoded.get("return") if isinstance(decoded, dict) else None


def read_host_view(dom: libvirt.virDomain) -> tuple[DomainNics, list[tuple[str, str]],
                                                    list[tuple[str, str]]]:
    """Blocking, no agent: the domain's NICs, its DHCP leases and its ARP entries."""
    found = []
    for source in (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                   libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP):
        try:
            found.append(libvirt_entries(dom.interfaceAddresses(source, 0)))
        except libvirt.libvirtError:
            found.append([])  # no lease network, no ARP entry
    return read_nics(dom), found[0], found[1]


class _AgentCall:
    """One call in flight to a guest's agent (at most one per guest)."""

    __slots__ = ("command", "sent_at", "started", "abandoned", "ended")

    def __init__(self, command: str, sent_at: float) -> None:
        self.command = command
        self.sent_at = sent_at  # loop time the probe asked for it
        self.started = False  # a pool thread has begun the libvirt call
        self.abandoned = False  # the caller stopped waiting: do not begin it any more
        self.ended = asyncio.Event()  # set when the call really ended: the slot is free


def _run_agent_call(call: _AgentCall, fn: Callable[..., Any], *args: Any) -> Any:
    """In a pool thread: the libvirt call, unless its caller gave up while it waited."""
    if call.abandoned:
        return None
    call.started = True
    return fn(*args)


class LibvirtGuestAccess:
    """GuestAccess for one domain; `dom` is replaced when the daemon reconnects.

    Agent calls (docs/security.md, "Guest agents"): at most one per guest is in flight.
    A probe that finds one pending is not run (AgentBusy). A call's verdict is
    libvirt's: it sends the command with the probe's timeout and measures it on the
    agent itself, so a FAILURE is never the time spent waiting for a thread or for
    libvirtd. Waiting longer than timeout + guest-sync + 1 s for libvirt's answer gives
    NoVerdict (an ERROR, not counted), and the call keeps its guest's slot until
    it really ends: one hung agent holds one thread, never more.

    `agent_pool`: the daemon's AgentLane, which runs each call at once on a libvirt
    connection of its own (looking `dom` up there by UUID); any other Executor runs
    the calls on `dom` itself, on `dom`'s connection (tests, benchmarks).

    Addresses (guest_addresses.py): leases and ARP entries from the host, plus the
    agent's own report (through the same one-call slot), kept only when they belong to
    the domain. Once addresses were found in this run, a look-up that finds none keeps
    the last ones: a frozen guest answers no ARP and no agent, and its probes must go on
    failing against where it was, not turn into uncounted "no address" errors.
    """

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
        self._agent_pending: _AgentCall | None = None
        self._refreshing: asyncio.Future | None = None  # a background address look-up

    async def addresses(self) -> list[str]:
        cached = self.cached_addresses()
        if cached is not None:  # the common case: no lock, no await
            return cached
        if self._addresses:
            # Known but stale: probe them now and look again in the background. A
            # frozen guest's agent makes a look-up take seconds (libvirt's guest-sync),
            # which must not delay the probes that are to find it frozen.
            if self._refreshing is None or self._refreshing.done():
                self._refreshing = asyncio.ensure_future(self._refresh_addresses())
            return list(self._addresses)
        await self._refresh_addresses()
        return list(self._addresses)

    async def _refresh_addresses(self) -> None:
        async with self._address_lock:
            if not self._addresses_stale():
                return  # refreshed while we waited for the lock
            try:
                found = await self._look_up_addresses()
            except NoVerdict:
                if not self._addresses:
                    raise
                found = []  # libvirt could not be asked: keep what we had
            if found or not self._addresses:
                self._addresses = found
            self._addresses_at = time.monotonic()

    async def _look_up_addresses(self) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            nics, leases, arp = await loop.run_in_executor(self._control_pool,
                                                           read_host_view, self.dom)
        except libvirt.libvirtError as exc:
            raise NoVerdict(f"libvirt cannot list the guest's addresses: "
                            f"{excerpt(exc.get_error_message())}") from None
        unasked = ""
        try:
            reply = await self._call_agent(GUEST_INTERFACES, ADDRESS_AGENT_TIMEOUT,
                                           slot_wait=ADDRESS_SLOT_WAIT_SECONDS)
            reported = agent_entries(reply)
        except (AgentUnavailable, AgentError):
            reported = []  # no agent (yet): the host's own sources alone
        except (AgentBusy, NoVerdict) as exc:
            # The agent could not be asked this time (another call of this guest's is
            # in flight, or no answer in time). The host's sources may still know.
            reported, unasked = [], str(exc)
        found = probe_targets(nics, leases, reported + arp)
        if not found and unasked:
            # "No address" would be a counted FAILURE, and nothing says the guest has
            # none: during boot a startup probe's agent call often holds the slot
            # while the agent alone knows the address. Unknown: not counted, and the
            # next probe looks again (nothing is cached).
            raise NoVerdict(f"guest addresses not known yet: the guest agent could not "
                            f"be asked ({excerpt(unasked)})")
        return found

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
        return await self._call_agent(command, timeout)

    async def _wait_for_slot(self, seconds: float) -> _AgentCall | None:
        """Wait up to `seconds` for this guest's agent calls in flight to end; the call
        still in flight then (None: the slot is free)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (pending := self._agent_pending) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(pending.ended.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._agent_pending

    async def _call_agent(self, command: dict[str, Any], timeout: float,
                          slot_wait: float = 0.0) -> Any:
        """One agent call in this guest's slot; a call already in flight makes it
        AgentBusy at once, or after waiting up to `slot_wait` seconds for it to end."""
        # libvirt treats 0 and negative values as "no wait" / "block forever": never pass them.
        seconds = max(1, int(round(timeout)))
        name = excerpt(command.get("execute", "?"), 64)
        pending = self._agent_pending
        if pending is not None and slot_wait > 0:
            pending = await self._wait_for_slot(slot_wait)
        loop = asyncio.get_running_loop()
        if pending is not None:
            raise AgentBusy(f"not run: {pending.command} sent to the guest agent "
                            f"{loop.time() - pending.sent_at:.1f} s ago has not returned "
                            "yet (one agent call per guest at a time)")
        call = self._agent_pending = _AgentCall(name, loop.time())
        lane = self._agent_pool
        text = json.dumps(command)
        if isinstance(lane, AgentLane):
            args: tuple = (lane.command, self.dom, text, seconds)
        else:
            args = (libvirt_qemu.qemuAgentCommand, self.dom, text, seconds, 0)
        future = loop.run_in_executor(lane, _run_agent_call, call, *args)
        future.add_done_callback(functools.partial(self._agent_call_ended, call))
        limit = seconds + AGENT_SYNC_SECONDS + ANSWER_SLACK_SECONDS
        try:
            reply = await asyncio.wait_for(asyncio.shield(future), limit)
        except asyncio.TimeoutError:
            call.abandoned = True
            if not call.started:
                raise NoVerdict(f"not run: no thread of the daemon took {name} within "
                                f"{limit} s (host overloaded?)") from None
            raise NoVerdict(f"libvirt did not answer {name} within {limit} s "
                            "(libvirtd busy?)") from None
        except AgentConnectionError as exc:
            raise NoVerdict(f"not run: {exc}") from None
        except libvirt.libvirtError as exc:
            raise _agent_error(exc, name) from None
        return decode_agent_reply(reply, name)

    def _agent_call_ended(self, call: _AgentCall, future: asyncio.Future) -> None:
        if self._agent_pending is call:
            self._agent_pending = None
        call.ended.set()
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned call's error is not news

    def prepare_agent(self) -> None:
        """Blocking: bound every libvirt agent call on this domain that vmhealth cannot
        give a timeout of its own (libvirt waits forever by default), so that a hung
        agent cannot hold libvirtd's threads without end. Not every driver has it."""
        try:
            self.dom.agentSetResponseTimeout(AGENT_RESPONSE_TIMEOUT_SECONDS, 0)
        except (libvirt.libvirtError, AttributeError):
            pass

    async def refresh_state(self) -> DomainState:
        loop = asyncio.get_running_loop()
        self.state = await loop.run_in_executor(self._control_pool, read_state, self.dom)
        return self.state

    def suppression_reason(self) -> str | None:
        return suppression_for(self.state)
