"""Run strategies in the daemon, against libvirt's test driver: a stop the operator did
not ask for starts the domain again under Always / RerunOnFailure, with the restart
back-off and a RunStrategyStart event; Manual leaves it off; an operator's stop, an
undefined or transient domain and a liveness restart in flight are left alone.

The test driver really stops and starts domains and emits STOPPED/STARTED events;
what it cannot do (a watchdog firing, QEMU's SHUTDOWN event with who asked, a crash)
is handed to the daemon's own callbacks, as libvirt would call them.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from tests.unit.daemon_support import FakeProber, failure, run, settle

from vmhealth.domainxml import apply_spec
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.daemon import Daemon
from vmhealth.spec import parse_spec

BASE = """<domain type='test'>
  <name>{name}</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e4{number:03d}</uuid>
  <memory>65536</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices/>
</domain>"""
LIVENESS = {"tcpSocket": {"port": 80}, "periodSeconds": 1}
STRATEGIES = {"always": "Always", "rerun": "RerunOnFailure", "manual": "Manual"}


def domain_xml(name: str, number: int, spec: dict) -> str:
    return apply_spec(BASE.format(name=name, number=number), parse_spec(spec)).xml


def strategy_spec(strategy: str, **more) -> dict:
    return {"livenessProbe": LIVENESS, "runStrategy": strategy, **more}


def make_daemon(tmp_path: Path, domains: list[str], **config) -> Daemon:
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>\n" + "\n".join(domains) + "\n</node>\n")
    options = {"backoff_initial_seconds": 1, **config}
    FakeProber.instances = []
    return Daemon(DaemonConfig(libvirt_uri=f"test://{driver}",
                               spool_dir=str(tmp_path / "spool"), **options),
                  prober_factory=FakeProber)


@pytest.fixture
def world(tmp_path: Path):
    daemon = make_daemon(tmp_path, [domain_xml(name, n, strategy_spec(strategy))
                                    for n, (name, strategy) in enumerate(STRATEGIES.items())])
    run(daemon.start())
    yield daemon
    run(daemon.shutdown())


def dom(daemon: Daemon, name: str) -> libvirt.virDomain:
    return daemon.conn.lookupByName(name)


def of_type(daemon: Daemon, name: str, kind: str) -> list:
    return [e for e in daemon.events.recent(name) if e.type == kind]


def watchdog_fires(daemon: Daemon, name: str, action: int) -> None:
    daemon.lifecycle.on_watchdog(daemon.conn, dom(daemon, name), action, None)


def shutdown_begins(daemon: Daemon, name: str, detail: int) -> None:
    daemon.lifecycle.on_lifecycle(daemon.conn, dom(daemon, name),
                                  libvirt.VIR_DOMAIN_EVENT_SHUTDOWN, detail, None)


def stops(daemon: Daemon, name: str, *, watchdog: bool = False,
          shutdown: int | None = None) -> None:
    """The domain stops (the test driver's shutdown: STOPPED/SHUTDOWN), after a watchdog
    poweroff or a SHUTDOWN event with `shutdown` as its detail if asked."""
    if watchdog:
        watchdog_fires(daemon, name, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF)
    if shutdown is not None:
        shutdown_begins(daemon, name, shutdown)
    dom(daemon, name).shutdown()


async def decided(daemon: Daemon, name: str, releases: int = 1) -> None:
    """Until the stop was seen (the monitored domain is released: the run strategy's
    task was made in the same callback) and every action it led to is over."""
    await settle(lambda: len(of_type(daemon, name, "Released")) >= releases)
    assert await daemon.actions.wait_idle(20)


async def started_again(daemon: Daemon, name: str, starts: int = 1) -> None:
    await settle(lambda: len(of_type(daemon, name, "RunStrategyStart")) >= starts)
    assert dom(daemon, name).isActive()


def test_always_starts_the_domain_again_after_a_watchdog_poweroff(world):
    async def scenario():
        old_id = dom(world, "always").ID()
        stops(world, "always", watchdog=True)
        await started_again(world, "always")
        assert dom(world, "always").ID() != old_id
        await settle(lambda: "always" in {m.name for m in world.monitors.values()})
    run(scenario())
    event = of_type(world, "always", "RunStrategyStart")[0]
    assert event.fields == {"runStrategy": "Always", "cause": "watchdog", "restarts": 1}
    assert event.message == "started again: runStrategy Always: the watchdog stopped it"


def test_manual_leaves_it_off_after_the_same_stop(world):
    async def scenario():
        stops(world, "manual", watchdog=True)
        await decided(world, "manual")
    run(scenario())
    assert not dom(world, "manual").isActive()
    # Today's behaviour, word for word: no run strategy event at all.
    assert not [e for e in world.events.recent("manual") if e.type.startswith("RunStrategy")]


def test_rerun_on_failure_starts_after_a_failure_not_after_a_clean_shutdown(world):
    async def scenario():
        stops(world, "rerun", watchdog=True)
        await started_again(world, "rerun")
        await settle(lambda: "rerun" in {m.name for m in world.monitors.values()})
        stops(world, "rerun", shutdown=libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST)
        await decided(world, "rerun", releases=2)
    run(scenario())
    assert not dom(world, "rerun").isActive()
    skipped = of_type(world, "rerun", "RunStrategySkipped")
    assert [e.fields for e in skipped] == [{"runStrategy": "RerunOnFailure",
                                            "cause": "guest-shutdown"}]
    assert skipped[0].message == ("left off: runStrategy RerunOnFailure leaves it off "
                                  "after: the guest shut down")


def test_always_starts_again_after_the_guest_powered_off(world):
    async def scenario():
        stops(world, "always", shutdown=libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST)
        await started_again(world, "always")
    run(scenario())
    assert of_type(world, "always", "RunStrategyStart")[0].fields["cause"] == "guest-shutdown"


@pytest.mark.parametrize(("how", "cause"), [("destroy", "destroyed"),
                                            ("host shutdown", "host-shutdown")])
def test_an_operators_stop_is_never_undone(world, how, cause):
    async def scenario():
        if how == "destroy":
            dom(world, "always").destroy()
        else:  # QEMU told to quit from the host (a signal): SHUTDOWN detail HOST
            stops(world, "always", shutdown=libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
        await decided(world, "always")
    run(scenario())
    assert not dom(world, "always").isActive()
    skipped = of_type(world, "always", "RunStrategySkipped")
    assert [e.fields for e in skipped] == [{"runStrategy": "Always", "cause": cause}]
    assert skipped[0].message.endswith("an operator's stop is never undone")
    assert not of_type(world, "always", "RunStrategyStart")


def test_a_crash_of_a_domain_with_only_a_watchdog_is_started_again(world):
    """No probe, so no monitor: the run strategy still applies (the daemon reads the
    spec of every domain that stops)."""
    spec = {"watchdog": {"action": "poweroff"}, "runStrategy": "RerunOnFailure"}
    world.conn.defineXML(domain_xml("dog", 10, spec))  # defined, off

    async def scenario():
        # libvirt's word for a guest panic with <on_crash>destroy</on_crash>.
        world.lifecycle.on_lifecycle(world.conn, dom(world, "dog"),
                                     libvirt.VIR_DOMAIN_EVENT_STOPPED,
                                     libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED, None)
        await started_again(world, "dog")
    run(scenario())
    assert of_type(world, "dog", "RunStrategyStart")[0].fields == {
        "runStrategy": "RerunOnFailure", "cause": "crashed", "restarts": 1}


def test_a_crash_loop_backs_off(world):
    async def scenario():
        for start in (1, 2):
            await settle(lambda: "always" in {m.name for m in world.monitors.values()})
            stops(world, "always", watchdog=True)
            await started_again(world, "always", starts=start)
    run(scenario())
    starts = of_type(world, "always", "RunStrategyStart")
    assert [e.fields["restarts"] for e in starts] == [1, 2]
    # The first start is at once; the second waits the restart back-off (1 s here).
    backoffs = of_type(world, "always", "RestartBackOff")
    assert [e.fields for e in backoffs] == [{"delaySeconds": 1.0, "restarts": 1}]


def test_a_liveness_restart_in_flight_is_left_to_itself(world):
    async def scenario():
        before = world.find("always")
        before.on_liveness_failed(failure())
        await settle(lambda: of_type(world, "always", "LivenessAction"))
        assert await world.actions.wait_idle(20)
    run(scenario())
    assert dom(world, "always").isActive()
    assert not [e for e in world.events.recent("always") if e.type.startswith("RunStrategy")]


def test_a_liveness_poweroff_is_a_failure_always_starts_again(tmp_path: Path):
    spec = strategy_spec("Always", onLivenessFailure="poweroff")
    daemon = make_daemon(tmp_path, [domain_xml("always", 0, spec)])

    async def scenario():
        await daemon.start()
        daemon.find("always").on_liveness_failed(failure())
        await started_again(daemon, "always")
        await daemon.shutdown()
    run(scenario())
    assert of_type(daemon, "always", "LivenessAction")[0].fields == {"action": "poweroff"}
    assert of_type(daemon, "always", "RunStrategyStart")[0].fields["cause"] == \
        "liveness-poweroff"


def _undefine(daemon: Daemon) -> None:
    dom(daemon, "always").undefine()


def _apply_manual(daemon: Daemon) -> None:  # what `vmhealth apply` does to a domain off
    daemon.conn.defineXML(domain_xml("always", 0, strategy_spec("Manual")))


@pytest.mark.parametrize(("meanwhile", "message", "strategy"), [
    (_undefine, "left off: undefined: nothing to start again", None),
    (_apply_manual, "left off: runStrategy Manual leaves it off after: the watchdog "
                    "stopped it", "Manual"),
], ids=["undefined", "set to Manual"])
def test_the_domain_is_checked_again_after_the_back_off(tmp_path: Path, meanwhile, message,
                                                         strategy):
    daemon = make_daemon(tmp_path, [domain_xml("always", 0, strategy_spec("Always"))],
                         backoff_initial_seconds=300, backoff_max_seconds=300)

    async def scenario():
        await daemon.start()
        uuid = dom(daemon, "always").UUIDString()
        daemon.actions.backoff(uuid).record(daemon.actions._clock())  # started just now
        stops(daemon, "always", watchdog=True)
        await settle(lambda: any(p.phase == "backing off"
                                 for p in daemon.actions.pending.values()))
        meanwhile(daemon)
        daemon.actions.stopping.set()  # end the wait now, as the daemon's SIGTERM does
        assert await daemon.actions.wait_idle(20)
        assert not daemon.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        await daemon.shutdown()
    run(scenario())
    skipped = of_type(daemon, "always", "RunStrategySkipped")
    assert [(e.message, e.fields) for e in skipped] == [
        (message, {"runStrategy": strategy, "cause": "watchdog"})]
    assert not of_type(daemon, "always", "RunStrategyStart")


def test_a_transient_domain_is_gone_once_stopped(world):
    xml = domain_xml("fleeting", 20, strategy_spec("Always"))

    async def scenario():
        world.conn.createXML(xml, 0)
        await settle(lambda: "fleeting" in {m.name for m in world.monitors.values()})
        stops(world, "fleeting", watchdog=True)
        await decided(world, "fleeting")
    run(scenario())
    with pytest.raises(libvirt.libvirtError):
        world.conn.lookupByName("fleeting")
    assert not [e for e in world.events.recent("fleeting") if e.type.startswith("RunStrategy")]


def test_nothing_new_is_started_while_the_daemon_stops(world):
    async def scenario():
        world.request_stop()
        stops(world, "always", watchdog=True)
        await decided(world, "always")
    run(scenario())
    assert not dom(world, "always").isActive()


def test_clues_are_dropped_with_the_domain(world):
    uuid = dom(world, "always").UUIDString()
    watchdog_fires(world, "always", libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF)
    assert uuid in world.actions.stop_clues._runs
    world.actions.retain(set())
    assert uuid not in world.actions.stop_clues._runs

