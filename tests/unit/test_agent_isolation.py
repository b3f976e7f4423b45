"""One guest's slow agent never fails another guest (docs/security.md, "Guest agents").

The seam is libvirt_qemu.qemuAgentCommand: hung guests block in it (as libvirt does
while it waits for a frozen agent), healthy ones answer at once. The handlers, the
GuestAccess and its thread pools are the daemon's own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from vmhealth import spec
from vmhealth.monitor import libvirt_access
from vmhealth.monitor.interfaces import AgentBusy, NoVerdict, Outcome
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.probes.agent_exec import run_agent_exec_probe
from vmhealth.monitor.probes.agent_ping import run_agent_ping_probe

RELEASE_SECONDS = 10  # a hung call ends by itself after this, whatever the test does


class Guest:
    def __init__(self, name: str, *, hung: bool = False) -> None:
        self._name, self.hung = name, hung
        self.release = threading.Event()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def name(self):
        return self._name


@pytest.fixture
def agents(monkeypatch):
    def command(dom, text, timeout, flags):
        with dom._lock:
            dom.calls += 1
            dom.in_flight += 1
            dom.most_in_flight = max(dom.most_in_flight, dom.in_flight)
        try:
            if dom.hung:
                dom.release.wait(RELEASE_SECONDS)
                raise _unresponsive()
            execute = json.loads(text)["execute"]
            if execute == "guest-exec":
                return json.dumps({"return": {"pid": 42}})
            if execute == "guest-exec-status":
                return json.dumps({"return": {"exited": True, "exitcode": 0}})
            return json.dumps({"return": {}})
        finally:
            with dom._lock:
                dom.in_flight -= 1
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", command)
    # Give up on libvirt's answer 0.2 s after the call's own timeout, not 6 s.
    monkeypatch.setattr(libvirt_access, "AGENT_SYNC_SECONDS", 0)
    monkeypatch.setattr(libvirt_access, "ANSWER_SLACK_SECONDS", 0.2)


def _unresponsive() -> libvirt.libvirtError:
    error = libvirt.libvirtError("Guest agent is not responding")
    error.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 0, "Guest agent is not responding",
                 0, None, None, None, 0, 0)
    return error


def probe(handler) -> spec.Probe:
    return spec.Probe(handler=handler, timeout_seconds=1, period_seconds=1)


PING = probe(spec.GuestAgentPing())
EXEC = probe(spec.Exec(command=("true",)))


def test_one_call_per_guest_in_flight_and_the_slot_is_held_until_the_call_ends(agents):
    guest = Guest("hung", hung=True)

    async def scenario():
        with ThreadPoolExecutor(4) as pool:
            access = LibvirtGuestAccess(guest, agent_pool=pool, control_pool=pool)
            first = asyncio.ensure_future(access.agent_command({"execute": "guest-ping"}, 1))
            await asyncio.sleep(0.05)
            with pytest.raises(AgentBusy, match="guest-ping sent to the guest agent"):
                await access.agent_command({"execute": "guest-ping"}, 1)
            with pytest.raises(NoVerdict):  # libvirt gave no verdict in time
                await first
            # The probe stopped waiting, but the call still holds its thread: the slot
            # stays taken until it really ends, so a hung guest never holds two threads.
            with pytest.raises(AgentBusy):
                await access.agent_command({"execute": "guest-ping"}, 1)
            guest.release.set()
            await asyncio.sleep(0.1)
            guest.hung = False
            return await access.agent_command({"execute": "guest-ping"}, 1)

    assert asyncio.run(scenario()) == {}
    assert guest.most_in_flight == 1


def test_a_probe_that_finds_a_call_in_flight_is_skipped_not_counted(agents):
    guest = Guest("hung", hung=True)

    async def scenario():
        with ThreadPoolExecutor(2) as pool:
            access = LibvirtGuestAccess(guest, agent_pool=pool, control_pool=pool)
            first = asyncio.ensure_future(run_agent_ping_probe(PING, access))
            await asyncio.sleep(0.05)
            second = await run_agent_exec_probe(EXEC, access)
            guest.release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.outcome is Outcome.FAILURE  # libvirt's verdict: not responding
    assert second.outcome is Outcome.SKIPPED and "has not returned yet" in second.message


def test_an_agent_that_is_not_responding_is_a_failure(monkeypatch, agents):
    def unresponsive(dom, text, timeout, flags):
        raise _unresponsive()
    monkeypatch.setattr(libvirt_access.libvirt_qemu, "qemuAgentCommand", unresponsive)

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            access = LibvirtGuestAccess(Guest("frozen"), agent_pool=pool, control_pool=pool)
            return (await run_agent_ping_probe(PING, access),
                    await run_agent_exec_probe(EXEC, access))

    ping, execute = asyncio.run(scenario())
    assert ping.outcome is Outcome.FAILURE and "not responding" in ping.message
    assert execute.outcome is Outcome.FAILURE and "not responding" in execute.message


@pytest.mark.parametrize("threads", [2, 6])
def test_more_hung_agents_than_threads_never_fail_a_healthy_guest(agents, threads):
    """Four hung guests, probed every 0.1 s, beside two healthy ones, with fewer pool
    threads than hung guests (2) and with more (6): a healthy guest's probe is never a
    FAILURE; with a thread to spare it keeps succeeding."""
    hung = [Guest(f"hung{i}", hung=True) for i in range(4)]
    healthy = [Guest(f"ok{i}") for i in range(2)]

    async def keep_probing(access, handler, probe_, until, results):
        while asyncio.get_running_loop().time() < until:
            results.append((await handler(probe_, access)).outcome)
            await asyncio.sleep(0.1)

    async def scenario():
        with ThreadPoolExecutor(threads) as pool:
            accesses = {g.name(): LibvirtGuestAccess(g, agent_pool=pool, control_pool=pool)
                        for g in hung + healthy}
            until = asyncio.get_running_loop().time() + 2.5
            results: dict[str, list] = {name: [] for name in accesses}
            runs = [keep_probing(accesses[g.name()], handler, probe_, until,
                                 results[g.name()])
                    for g in hung + healthy
                    for handler, probe_ in ((run_agent_ping_probe, PING),
                                            (run_agent_exec_probe, EXEC))]
            await asyncio.gather(*runs)
            for guest in hung:
                guest.release.set()
            return results

    results = asyncio.run(scenario())
    for guest in healthy:
        outcomes = results[guest.name()]
        assert Outcome.FAILURE not in outcomes, (guest.name(), outcomes)
        if threads > len(hung):
            assert outcomes.count(Outcome.SUCCESS) >= len(outcomes) // 2, outcomes
    for guest in hung + healthy:
        assert guest.most_in_flight <= 1  # never two calls to one guest's agent
