"""Liveness actions on libvirt's test driver, and the restart back-off."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from vmhealth.monitor.actions import ActionRunner, Backoff
from vmhealth.monitor.events import EventLog
from vmhealth.spec import LivenessAction


def test_backoff_doubles_from_10s_caps_at_5min_and_resets_after_10min():
    backoff = Backoff()
    now = 0.0
    delays = []
    for _ in range(8):
        delays.append(backoff.delay(now))
        backoff.record(now)
        now += 1
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert backoff.delay(backoff.last + 599) == 300
    assert backoff.delay(backoff.last + 600) == 0


async def take(dom, action: LivenessAction, grace: int = 1, **options) -> ActionRunner:
    events = EventLog()
    with ThreadPoolExecutor(2) as pool:
        runner = ActionRunner(events, pool, **options)
        task = runner.start(dom, action, grace, "connection refused")
        assert runner.start(dom, action, grace, "again") is None  # one at a time
        await asyncio.wait_for(task, 30)
    return runner


def last_event(runner: ActionRunner):
    return runner._events.recent()[-1]


def test_restart_of_a_persistent_domain(conn):
    dom = conn.lookupByName("web1")
    old_id = dom.ID()
    runner = asyncio.run(take(dom, LivenessAction.RESTART))
    assert dom.isActive() and dom.ID() != old_id
    assert last_event(runner).type == "LivenessAction"
    assert not runner.pending


def test_restart_of_a_transient_domain_recreates_it(conn):
    xml = conn.lookupByName("q35vm").XMLDesc(0).replace("q35vm", "transient").replace(
        "6695eb01-f6a4-8304-79aa-97f2502e1941", "6695eb01-f6a4-8304-79aa-97f2502e1999")
    dom = conn.createXML(xml, 0)
    assert not dom.isPersistent()
    asyncio.run(take(dom, LivenessAction.RESTART))
    again = conn.lookupByName("transient")
    assert again.isActive() and again.ID() != dom.ID()


def test_poweroff_leaves_it_off_and_reset_keeps_it_running(conn):
    web1 = conn.lookupByName("web1")
    asyncio.run(take(web1, LivenessAction.POWEROFF))
    assert not web1.isActive()
    ib700 = conn.lookupByName("ib700vm")
    old_id = ib700.ID()
    asyncio.run(take(ib700, LivenessAction.RESET))
    assert ib700.isActive() and ib700.ID() == old_id


class StubbornDomain:
    """A guest that ignores the ACPI shutdown request (narrow fake of virDomain)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = True

    def name(self): return "stubborn"
    def UUIDString(self): return "6695eb01-f6a4-8304-79aa-97f2502e1777"
    def isPersistent(self): return True
    def isActive(self): return self.active
    def shutdown(self): self.calls.append("shutdown through the agent, then ACPI")

    def shutdownFlags(self, flags):  # noqa: N802 - libvirt's name
        assert flags == libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN  # never the agent
        self.calls.append("shutdown")

    def destroy(self):
        self.calls.append("destroy")
        self.active = False

    def create(self):
        self.calls.append("create")
        self.active = True


def test_a_guest_ignoring_shutdown_is_destroyed_after_the_grace_period():
    dom = StubbornDomain()
    asyncio.run(take(dom, LivenessAction.RESTART, grace=1))
    assert dom.calls == ["shutdown", "destroy", "create"]


def test_second_restart_backs_off_and_stopping_ends_the_wait():
    dom = StubbornDomain()

    async def scenario():
        events = EventLog()
        with ThreadPoolExecutor(2) as pool:
            runner = ActionRunner(events, pool, initial=300, maximum=300)
            await asyncio.wait_for(runner.start(dom, LivenessAction.RESTART, 0, "x"), 30)
            task = runner.start(dom, LivenessAction.RESTART, 0, "x")
            while runner.pending[dom.UUIDString()].phase != "backing off":
                await asyncio.sleep(0.01)
            assert not dom.active  # off while backing off, like CrashLoopBackOff
            runner.stopping.set()
            await asyncio.wait_for(task, 30)
        return events
    events = asyncio.run(scenario())
    assert dom.active
    assert [e.type for e in events.recent()] == ["LivenessAction", "RestartBackOff",
                                                 "LivenessAction"]


def test_a_libvirt_refusal_is_recorded(conn):
    dom = conn.lookupByName("web1")
    dom.destroy()
    dom.undefine()  # gone: create() fails
    runner = asyncio.run(take(dom, LivenessAction.RESTART))
    assert last_event(runner).type == "LivenessActionFailed"
    assert not runner.pending


@pytest.fixture(autouse=True)
def _quiet():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class FailingStart:
    """A test-driver domain whose first `failures` starts fail, as a missing disk would."""

    def __init__(self, dom, failures: int) -> None:
        self._dom, self.failures, self.starts = dom, failures, 0

    def __getattr__(self, name):
        return getattr(self._dom, name)

    def create(self):
        self.starts += 1
        if self.starts <= self.failures:
            error = libvirt.libvirtError("Cannot access storage file '/gone.img'")
            error.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, error.args[0], 0, None, None,
                         None, 0, 0)
            raise error
        return self._dom.create()


def test_a_restart_whose_start_fails_tries_again_after_the_back_off(conn):
    """Nobody else would start it: the action keeps trying, paced by the back-off."""
    dom = FailingStart(conn.lookupByName("web1"), failures=2)
    runner = asyncio.run(take(dom, LivenessAction.RESTART, initial=0.05))
    assert dom.starts == 3 and dom.isActive()
    types = [e.type for e in runner._events.recent()]
    assert types.count("LivenessActionFailed") == 2
    assert types.count("RestartBackOff") == 2  # waited before the 2nd and 3rd start
    assert types[-1] == "LivenessAction"
    assert runner.backoff(dom.UUIDString()).count == 3
