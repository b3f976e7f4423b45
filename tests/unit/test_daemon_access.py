"""GuestAccess over libvirt: suppression from domain states, agent errors, addresses."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from vmhealth.monitor import libvirt_access
from vmhealth.monitor.interfaces import AgentError, AgentUnavailable, NoVerdict
from vmhealth.monitor.libvirt_access import (
    EMPTY_ADDRESS_RETRY_SECONDS,
    DomainState,
    LibvirtGuestAccess,
    suppression_for,
)

P = libvirt.VIR_DOMAIN_PAUSED


@pytest.mark.parametrize(("state", "expected"), [
    (DomainState(libvirt.VIR_DOMAIN_RUNNING, 1), None),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_USER), "paused by the user"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_MIGRATION), "paused for migration"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_SAVE), "paused while saving"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_DUMP), "paused for a core dump"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT), "paused for a snapshot"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP), "starting up"),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY), "paused in post-copy migration"),
    # Real trouble: failures count.
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_IOERROR), None),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_CRASHED), None),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED), None),
    (DomainState(P, libvirt.VIR_DOMAIN_PAUSED_WATCHDOG), None),
    (DomainState(libvirt.VIR_DOMAIN_RUNNING, 1,
                 libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT), "migrating out"),
    (DomainState(libvirt.VIR_DOMAIN_RUNNING, 1,
                 libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT), "taking a snapshot"),
    (DomainState(libvirt.VIR_DOMAIN_SHUTOFF, 1), "not running"),
    (None, "domain state not known yet"),
])
def test_suppression(state, expected):
    assert suppression_for(state) == expected


class AgentDomain:
    """The narrow seam: what qemuAgentCommand is called with, and what it answers."""

    def __init__(self, answer=None, error: libvirt.libvirtError | None = None) -> None:
        self.answer, self.error = answer, error
        self.calls: list[tuple[str, int]] = []

    def name(self):
        return "web1"


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, 0, message, 0, None, None, None, 0, 0)
    return error


@pytest.fixture
def agent_calls(monkeypatch):
    def fake(dom, text, timeout, flags):
        dom.calls.append((text, timeout))
        if dom.error is not None:
            raise dom.error
        return dom.answer
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", fake)


def agent(dom, command, timeout):
    async def call():
        with ThreadPoolExecutor(1) as pool:
            access = LibvirtGuestAccess(dom, agent_pool=pool, control_pool=pool)
            return await access.agent_command(command, timeout)
    return asyncio.run(call())


def test_agent_command_is_json_with_a_positive_timeout(agent_calls):
    dom = AgentDomain(json.dumps({"return": {"pid": 7}}))
    command = {"execute": "guest-exec", "arguments": {"path": "sh", "arg": ['"; rm -rf /']}}
    assert agent(dom, command, 0.2) == {"pid": 7}
    text, timeout = dom.calls[0]
    assert json.loads(text) == command and timeout == 1


def test_agent_not_connected_is_unavailable(agent_calls):
    dom = AgentDomain(error=libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                          "Guest agent is not responding"))
    with pytest.raises(AgentUnavailable):
        agent(dom, {"execute": "guest-ping"}, 1)


def test_blocked_rpc_names_the_fix(agent_calls):
    dom = AgentDomain(error=libvirt_error(
        libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: unable to execute QEMU agent "
        "command 'guest-exec': The command guest-exec has been disabled for this instance"))
    with pytest.raises(AgentError) as error:
        agent(dom, {"execute": "guest-exec"}, 1)
    assert error.value.blocked
    assert "allow-rpcs" in str(error.value)


NIC_XML = """<domain type='kvm'><name>web1</name><devices>
  <interface type='network'><mac address='52:54:00:00:00:01'/>
    <source network='default'/></interface>
</devices></domain>"""
NET_XML = """<network><name>default</name><bridge name='virbr-none'/>
  <ip address='10.0.0.1' netmask='255.255.255.0'/><ip family='ipv6' address='fd00::1' prefix='64'/>
</network>"""


class AddressDomain:
    """A domain on the libvirt network 10.0.0.0/24 + fd00::/64 with MAC ...:01: its
    lease and ARP answers by source; the agent's answer comes through qemuAgentCommand."""

    def __init__(self, answers, agent=None) -> None:
        self.answers = answers
        self.answer, self.error = (json.dumps({"return": agent}) if agent is not None
                                   else None), None
        if agent is None:
            self.error = libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE, "no agent")
        self.calls: list[tuple[str, int]] = []

    def name(self):
        return "web1"

    def XMLDesc(self, flags):  # noqa: N802 - libvirt's name
        return NIC_XML

    def connect(self):
        class Conn:
            def networkLookupByName(self, name):  # noqa: N802
                class Net:
                    def XMLDesc(self, flags):  # noqa: N802
                        return NET_XML
                return Net()
        return Conn()

    def interfaceAddresses(self, source, flags):  # noqa: N802
        answer = self.answers.get(source)
        if answer is None:
            raise libvirt_error(libvirt.VIR_ERR_OPERATION_UNSUPPORTED, "no such source")
        return answer


def iface(*addresses, mac="52:54:00:00:00:01"):
    return {"eth0": {"hwaddr": mac,
                     "addrs": [{"addr": a, "prefix": 24, "type": 0} for a in addresses]}}


def agent_iface(*addresses, mac="52:54:00:00:00:01"):
    return [{"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"}]},
            {"name": "eth0", "hardware-address": mac,
             "ip-addresses": [{"ip-address": a, "ip-address-type": "ipv4", "prefix": 24}
                              for a in addresses]}]


def look_up(dom, refresh=3600):
    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            access = LibvirtGuestAccess(dom, agent_pool=pool, control_pool=pool,
                                        address_refresh_seconds=refresh)
            return await access.addresses()
    return asyncio.run(scenario())


def test_addresses_from_every_source_ipv4_first_without_loopback_or_link_local(agent_calls):
    dom = AddressDomain({libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP:
                         iface("10.0.0.10", "10.0.0.11")},
                        agent=agent_iface("fd00::10", "fe80::1", "10.0.0.10"))
    assert look_up(dom) == ["10.0.0.10", "10.0.0.11", "fd00::10"]
    assert json.loads(dom.calls[0][0]) == {"execute": "guest-network-get-interfaces"}


def test_agent_and_arp_addresses_off_the_domains_networks_or_macs_are_not_targets(
        agent_calls):
    """A guest's agent and ARP answers must not make the host probe the host itself or
    other machines (docs/security.md, "Probe targets")."""
    dom = AddressDomain({libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP:
                         {**iface("10.0.0.12"), "eth1": iface("10.0.0.13",
                                                                 mac="52:54:00:99:99:99")
                                                   ["eth0"]}},
                        agent=agent_iface("10.0.0.10", "192.168.50.7", "8.8.8.8"))
    assert look_up(dom) == ["10.0.0.10", "10.0.0.12"]


def test_leases_of_the_domains_macs_are_targets_as_they_are(agent_calls):
    dom = AddressDomain({libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE:
                         iface("10.0.0.5")})
    assert look_up(dom) == ["10.0.0.5"]


def test_addresses_are_cached_until_stale_and_read_once_by_concurrent_probes(agent_calls):
    class Counting(AddressDomain):
        reads = 0

        def interfaceAddresses(self, source, flags):  # noqa: N802
            if source == libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE:
                Counting.reads += 1
            return super().interfaceAddresses(source, flags)

    dom = Counting({libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE: iface("10.0.0.5")})

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            access = LibvirtGuestAccess(dom, agent_pool=pool, control_pool=pool,
                                        address_refresh_seconds=3600)
            first = await asyncio.gather(*(access.addresses() for _ in range(5)))
            reads_after_first = Counting.reads
            again = await access.addresses()
            access.forget_addresses()
            # Stale but known: given at once, looked up again in the background.
            stale = await access.addresses()
            for _ in range(200):
                if Counting.reads == 2:
                    break
                await asyncio.sleep(0.01)
            assert stale == ["10.0.0.5"]
            return first, reads_after_first, again, Counting.reads

    first, reads_after_first, again, reads = asyncio.run(scenario())
    assert first == [["10.0.0.5"]] * 5 and again == ["10.0.0.5"]
    assert reads_after_first == 1  # five concurrent probes, one lookup
    assert reads == 2  # forget_addresses: looked up again


def test_a_guest_that_loses_its_addresses_keeps_its_last_known_ones(agent_calls):
    """A frozen guest answers no agent and ARP forgets it: its probes go on against
    where it was (and fail there), rather than turning into "no address"."""
    dom = AddressDomain({}, agent=agent_iface("10.0.0.10"))

    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            access = LibvirtGuestAccess(dom, agent_pool=pool, control_pool=pool)
            first = await access.addresses()
            dom.answer, dom.error = None, libvirt_error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                                        "Guest agent is not responding")
            access.forget_addresses()
            return first, await access.addresses()

    assert asyncio.run(scenario()) == (["10.0.0.10"], ["10.0.0.10"])


WAIT_SECONDS = 30.0


def ping_held_until_released(monkeypatch) -> threading.Event:
    """Agent calls answer at once, except guest-ping: it stays in flight (holding the
    guest's one agent slot, as a startup probe's call does) until the event is set."""
    release = threading.Event()

    def fake(dom, text, timeout, flags):
        if "guest-ping" in text:
            release.wait(WAIT_SECONDS)
            return json.dumps({"return": {}})
        return dom.answer
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", fake)
    return release


def test_no_address_while_the_agent_cannot_be_asked_is_unknown_not_none(monkeypatch):
    """During boot a startup probe's agent call may hold the guest's one agent slot
    while only the agent knows the address. A look-up waits a moment for that call
    (ADDRESS_SLOT_WAIT_SECONDS: an exec probe that ticks with an HTTP probe would
    otherwise hold the slot at every look-up and starve the HTTP probe). When the call
    outlasts the wait, the look-up says "unknown" (NoVerdict, an uncounted ERROR), never
    "no address" (a counted FAILURE), and caches nothing; when it ends within the wait,
    the look-up asks the agent and finds the address."""
    release = ping_held_until_released(monkeypatch)
    dom = AddressDomain({}, agent=agent_iface("10.0.0.10"))  # no lease, no ARP

    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            access = LibvirtGuestAccess(dom, agent_pool=pool, control_pool=pool)
            ping = asyncio.ensure_future(access.agent_command({"execute": "guest-ping"}, 5))
            await asyncio.sleep(0)  # the ping takes the slot
            monkeypatch.setattr(libvirt_access, "ADDRESS_SLOT_WAIT_SECONDS", 0.1)
            with pytest.raises(NoVerdict, match="not known yet"):
                await access.addresses()  # the ping outlasts the wait
            unknown_cached = access.cached_addresses()
            monkeypatch.setattr(libvirt_access, "ADDRESS_SLOT_WAIT_SECONDS", WAIT_SECONDS)
            look_up = asyncio.ensure_future(access.addresses())
            await asyncio.sleep(0.2)
            waiting = not look_up.done()  # it waits for the ping, not failing at once
            release.set()
            await ping
            return unknown_cached, waiting, await look_up

    assert asyncio.run(scenario()) == (None, True, ["10.0.0.10"])


def test_no_address_when_the_agent_answered_is_none(agent_calls):
    """The agent was asked and reports nothing on the domain's networks: no address."""
    assert look_up(AddressDomain({}, agent=agent_iface("192.168.99.5"))) == []


def test_addresses_valid_until_is_when_the_cache_goes_stale(agent_calls):
    """The native lane hands a probe back at addresses_valid_until(); cached_addresses()
    must say "look them up" from that moment, and not before."""
    async def scenario(sources):
        with ThreadPoolExecutor(1) as pool:
            access = LibvirtGuestAccess(AddressDomain(sources), agent_pool=pool,
                                        control_pool=pool, address_refresh_seconds=30)
            assert access.addresses_valid_until() == float("-inf")  # never read
            assert access.cached_addresses() is None
            before = time.monotonic()
            await access.addresses()
            after = time.monotonic()
            valid_until = access.addresses_valid_until()
            cached = access.cached_addresses()
            access.forget_addresses()
            # The lifetime counts from the lookup, which ran between before and after.
            return (valid_until - after, valid_until - before), cached, \
                access.cached_addresses()

    lifetime, cached, forgotten = asyncio.run(scenario(
        {libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE: iface("10.0.0.5")}))
    assert lifetime[0] <= 30 <= lifetime[1]
    assert cached == ["10.0.0.5"] and forgotten is None
    lifetime, cached, _ = asyncio.run(scenario({}))  # nothing found: retried sooner
    assert lifetime[0] <= EMPTY_ADDRESS_RETRY_SECONDS <= lifetime[1] and cached == []


class StateDomain:
    """A domain with a state and a job; counts the job queries."""

    def __init__(self, state: int, reason: int, operation: int | None = None) -> None:
        self._state, self._reason, self._operation = state, reason, operation
        self.job_queries = 0

    def state(self):
        return [self._state, self._reason]

    def jobStats(self):  # noqa: N802 - libvirt's name
        self.job_queries += 1
        if self._operation is None:
            return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": self._operation}


def test_read_state_reports_the_job_of_a_running_domain():
    dom = StateDomain(libvirt.VIR_DOMAIN_RUNNING, 1,
                      libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)
    state = libvirt_access.read_state(dom)
    assert state.job_operation == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT
    assert suppression_for(state) == "migrating out"
    assert libvirt_access.read_state(StateDomain(libvirt.VIR_DOMAIN_RUNNING, 1)) \
        == DomainState(libvirt.VIR_DOMAIN_RUNNING, 1)


@pytest.mark.parametrize(("state", "reason"), [
    (P, libvirt.VIR_DOMAIN_PAUSED_MIGRATION),  # a migration's destination
    (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED),
])
def test_read_state_does_not_ask_for_the_job_when_the_state_already_suppresses(state,
                                                                               reason):
    dom = StateDomain(state, reason, libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN)
    assert suppression_for(libvirt_access.read_state(dom)) is not None
    assert dom.job_queries == 0


def test_read_state_still_asks_when_a_pause_is_real_trouble():
    dom = StateDomain(P, libvirt.VIR_DOMAIN_PAUSED_IOERROR,
                      libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT)
    assert suppression_for(libvirt_access.read_state(dom)) == "migrating out"
    assert dom.job_queries == 1
