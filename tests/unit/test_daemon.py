"""The daemon against libvirt's test driver: adoption, events, spool, liveness actions.

libvirt accepts one event-loop implementation per process, so every test here runs on
one event loop (registered with libvirtaio once); each test has its own driver XML
and its own daemon. The probe engine is replaced by a recording fake: these tests are
about what the daemon does with what the prober reports.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import libvirt
import pytest
from tests.unit.daemon_support import (
    LIVENESS,
    UUIDS,
    FakeProber,
    domain_xml,
    failure,
    run,
    settle,
)

from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.daemon import Daemon
from vmhealth.monitor.interfaces import Outcome, ProbeResult, StateChange
from vmhealth.spec import ProbeKind


@pytest.fixture
def world(tmp_path: Path):
    domains = [domain_xml("web1", LIVENESS),
               domain_xml("web2", {"readinessProbe": {"tcpSocket": {"port": 80}}}),
               domain_xml("plain", None)]
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>\n" + "\n".join(domains) + "\n</node>\n")
    config = DaemonConfig(libvirt_uri=f"test://{driver}", spool_dir=str(tmp_path / "spool"),
                          state_refresh_seconds=0.2, backoff_initial_seconds=1)
    FakeProber.instances = []
    daemon = Daemon(config, prober_factory=FakeProber)
    run(daemon.start())
    yield daemon
    run(daemon.shutdown())


def names(daemon: Daemon) -> set[str]:
    return {m.name for m in daemon.monitors.values()}


def dom(daemon: Daemon, name: str) -> libvirt.virDomain:
    return daemon.conn.lookupByName(name)


def test_adopts_running_domains_with_a_spec_only(world):
    assert names(world) == {"web1", "web2"}
    started = [p.started for p in FakeProber.instances]
    # Found running at daemon start: jittered so probes do not fire in lock-step.
    assert all(options["jitter_first_probe"] for options in started)
    assert {e.domain for e in world.events.recent() if e.type == "Adopted"} == {"web1", "web2"}


def test_probers_share_the_native_lane_unless_configured_off(world, tmp_path):
    assert world.lanes is not None
    assert all(p.lanes is world.lanes for p in FakeProber.instances)
    config = DaemonConfig(libvirt_uri=world.config.libvirt_uri, native_lane=False,
                          spool_dir=str(tmp_path / "spool2"))
    FakeProber.instances = []
    daemon = Daemon(config, prober_factory=FakeProber)
    run(daemon.start())
    try:
        assert daemon.lanes is None
        assert FakeProber.instances and all(p.lanes is None for p in FakeProber.instances)
    finally:
        run(daemon.shutdown())


def test_status_reports_initial_states(world):
    entry = world.domain_status("web2")
    assert entry["ready"] is False and entry["live"] is True
    assert entry["state"] == "running"
    assert entry["probes"]["readiness"]["healthy"] is False
    assert world.domain_status(UUIDS["web1"])["name"] == "web1"
    with pytest.raises(LookupError):
        world.domain_status("plain")


def test_stop_and_start_events_release_and_adopt_afresh(world):
    async def scenario():
        first = world.find("web1").prober
        dom(world, "web1").destroy()
        await settle(lambda: "web1" not in names(world))
        assert first.stopped
        dom(world, "web1").create()
        await settle(lambda: "web1" in names(world))
        assert world.find("web1").prober is not first
        # A new run is probed on its own schedule, from its start.
        assert world.find("web1").prober.started == {"jitter_first_probe": False,
                                                     "run_age_seconds": 0.0}
    run(scenario())
    types = [e.type for e in world.events.recent("web1")]
    assert types.index("Released") < len(types) - 1 and types[-1] == "Adopted"
    released = next(e for e in world.events.recent("web1") if e.type == "Released")
    assert released.message == "no longer monitored: stopped: destroyed"


def test_state_change_is_published_and_recorded(world):
    monitor = world.find("web2")
    result = ProbeResult(Outcome.SUCCESS, "connected", 0.01, time.time())
    monitor.on_result(ProbeKind.READINESS, result, counted=True)
    monitor.on_state_change(StateChange(ProbeKind.READINESS, True, "ready", result))
    entry = world.domain_status("web2")
    assert entry["ready"] is True
    assert entry["probes"]["readiness"]["lastResult"]["message"] == "connected"
    assert world.events.recent("web2")[-1].type == "Ready"
    assert b'vmhealth_probe_healthy{domain="web2",probe="readiness"} 1.0' in \
        world.metrics.render()


def test_liveness_failure_restarts_the_domain(world):
    async def scenario():
        before = world.find("web1")
        old_id = dom(world, "web1").ID()
        before.on_liveness_failed(failure())
        await settle(lambda: any(e.type == "LivenessAction" for e in world.events.recent()))
        await settle(lambda: "web1" in names(world) and world.find("web1") is not before)
        assert dom(world, "web1").isActive()
        assert dom(world, "web1").ID() != old_id
    run(scenario())
    types = [e.type for e in world.events.recent("web1")]
    assert "LivenessFailed" in types and "LivenessAction" in types
    assert b'vmhealth_liveness_actions_total{action="restart",domain="web1"} 1.0' in \
        world.metrics.render()


def test_no_action_while_the_user_has_paused_the_domain(world):
    async def scenario():
        dom(world, "web1").suspend()
        monitor = world.find("web1")
        await settle(lambda: monitor.access.suppression_reason() == "paused by the user")
        monitor.on_liveness_failed(failure())
        await settle(lambda: any(e.type == "ActionSkipped" for e in world.events.recent()))
    run(scenario())
    assert dom(world, "web1").state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert not any(e.type == "LivenessAction" for e in world.events.recent())


def test_action_none_only_reports(tmp_path: Path):
    spec = {**LIVENESS, "onLivenessFailure": "none"}
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + domain_xml("web1", spec) + "</node>")
    daemon = Daemon(DaemonConfig(libvirt_uri=f"test://{driver}",
                                 spool_dir=str(tmp_path / "spool")), prober_factory=FakeProber)

    async def scenario():
        await daemon.start()
        old_id = daemon.conn.lookupByName("web1").ID()
        daemon.find("web1").on_liveness_failed(failure())
        await settle(lambda: any(e.type == "LivenessFailed" for e in daemon.events.recent()))
        assert daemon.conn.lookupByName("web1").ID() == old_id
        await daemon.shutdown()
    run(scenario())


def test_watchdog_and_agent_events_are_recorded(world):
    web1 = dom(world, "web1")
    handlers = world.lifecycle
    handlers.on_watchdog(world.conn, web1, libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF, None)
    handlers.on_agent(world.conn, web1,
                      libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED, 2, None)
    events = world.events.recent("web1")
    assert (events[-2].type, events[-2].fields) == ("Watchdog", {"action": "poweroff"})
    assert events[-1].type == "AgentDisconnected"
    prober = world.monitors[web1.UUIDString()].prober
    assert prober.lanes_recalled == 0
    handlers.on_agent(world.conn, web1,
                      libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED, 1, None)
    assert prober.lanes_recalled == 1  # the agent may report new addresses: probe them
    assert b'vmhealth_watchdog_events_total{action="poweroff",domain="web1"} 1.0' in \
        world.metrics.render()


def test_spec_removed_by_redefine_releases_the_domain(world):
    async def scenario():
        world.conn.defineXML(domain_xml("web2", None))
        # The running domain's own metadata still has the spec (it was started with it);
        # clearing it there too, as `vmhealth remove` does, releases the domain.
        dom(world, "web2").setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None,
                                       "https://vmhealth.dev/xmlns/health/1",
                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)
        await settle(lambda: "web2" not in names(world))
    run(scenario())


def test_spool_file_leads_to_adoption(world):
    async def scenario():
        await world.registry.drop(UUIDS["web1"], "test")
        assert "web1" not in names(world)
        spool = Path(world.config.spool_dir)
        temporary = spool / ".tmp-web1"
        temporary.write_text(domain_xml("web1", LIVENESS))
        temporary.rename(spool / f"{UUIDS['web1']}.xml")  # what the hook does
        await settle(lambda: "web1" in names(world))
    run(scenario())
    assert world.find("web1").prober.started["jitter_first_probe"] is True


def test_invalid_spec_is_reported_not_adopted(tmp_path: Path):
    xml = domain_xml("web1", LIVENESS).replace('"port":80', '"port":0')
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + xml + "</node>")
    daemon = Daemon(DaemonConfig(libvirt_uri=f"test://{driver}",
                                 spool_dir=str(tmp_path / "spool")), prober_factory=FakeProber)

    async def scenario():
        await daemon.start()
        await daemon.shutdown()
    run(scenario())
    assert not daemon.monitors
    invalid = [e for e in daemon.events.recent() if e.type == "SpecInvalid"]
    assert "tcpSocket.port" in invalid[0].message


def test_host_defaults_fill_fields_the_stored_spec_lacks(tmp_path: Path):
    # A spec written by other tooling, without periodSeconds.
    xml = domain_xml("web1", LIVENESS).replace(',"periodSeconds":1', "")
    assert "periodSeconds" not in xml
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + xml + "</node>")
    config = DaemonConfig(libvirt_uri=f"test://{driver}", spool_dir=str(tmp_path / "spool"),
                          spec_defaults={"periodSeconds": 5})
    daemon = Daemon(config, prober_factory=FakeProber)

    async def scenario():
        await daemon.start()
        await daemon.shutdown()
    run(scenario())
    assert FakeProber.instances[-1].spec.liveness_probe.period_seconds == 5


def test_reconnect_keeps_monitors_of_the_same_run(world):
    async def scenario():
        monitor = world.find("web1")
        old_conn = world.conn
        world.connection.close_connection()
        await world.connection.connect()
        assert world.conn is not old_conn
        # The test driver keeps no state across connections, so it is a fresh "host":
        # what matters is that reconcile ran against the new connection.
        assert world.find("web1").access.dom.connect() is world.conn
        return monitor
    run(scenario())


def test_a_close_noticed_by_a_pool_thread_reconnects_on_the_loop(world):
    """libvirt calls the close callback from whichever thread sees the connection die;
    a guest-agent call in a pool thread does (seen in the libvirtd-restart e2e test)."""
    async def scenario():
        old_conn = world.conn
        await asyncio.get_running_loop().run_in_executor(
            world.connection.agent_pool, world.connection.on_close, old_conn, 1, None)
        await settle(lambda: any(e.type == "LibvirtReconnected" for e in world.events.recent()))
        return old_conn
    old_conn = run(scenario())
    assert world.conn is not None and world.conn is not old_conn
    types = [e.type for e in world.events.recent()]
    assert types.index("LibvirtDisconnected") < types.index("LibvirtReconnected")


def test_first_sigterm_finishes_a_restart_in_back_off(tmp_path: Path):
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + domain_xml("web1", LIVENESS) + "</node>")
    config = DaemonConfig(libvirt_uri=f"test://{driver}", spool_dir=str(tmp_path / "spool"),
                          backoff_initial_seconds=300, backoff_max_seconds=300)
    daemon = Daemon(config, prober_factory=FakeProber)

    async def scenario():
        await daemon.start()
        conn = daemon.conn
        daemon.find("web1").on_liveness_failed(failure())  # first restart: no back-off
        await settle(lambda: any(e.type == "LivenessAction" for e in daemon.events.recent()))
        await settle(lambda: "web1" in names(daemon))
        daemon.find("web1").on_liveness_failed(failure())  # second: 300 s back-off
        await settle(lambda: any(p.phase == "backing off"
                                 for p in daemon.actions.pending.values()))
        assert not conn.lookupByName("web1").isActive()
        daemon.request_stop()
        await daemon.shutdown()
    run(scenario())
    # Stopping ended the back-off early and the restart finished: the domain was
    # started again rather than left off.
    actions = [e for e in daemon.events.recent() if e.type == "LivenessAction"]
    assert len(actions) == 2


def test_status_and_domain_status_agree_on_ready_during_a_liveness_action(tmp_path: Path):
    """`vmhealth status` and `vmhealth status web1` read one rule: while a restart is
    in flight (its first libvirt call held in the one control thread) both say not
    ready, for the same reason, and both say ready again once it is done."""
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + domain_xml("web1", LIVENESS) + "</node>")
    config = DaemonConfig(libvirt_uri=f"test://{driver}", spool_dir=str(tmp_path / "spool"),
                          control_threads=1, state_refresh_seconds=0.2)
    daemon = Daemon(config, prober_factory=FakeProber)
    before_refresh, after_refresh = threading.Event(), threading.Event()

    def readiness() -> list[tuple[bool, str | None]]:
        listed = daemon.status()["domains"]
        one = daemon.domain_status("web1")
        return [(entry["ready"], entry["notReadyReason"]) for entry in (*listed, one)]

    async def scenario():
        await daemon.start()
        assert readiness() == [(True, None), (True, None)]
        pool = daemon.connection.control_pool  # one thread: calls run in order
        pool.submit(before_refresh.wait, 10)
        daemon.find("web1").on_liveness_failed(failure())
        await asyncio.sleep(0)  # one turn: the policy's task queues its state refresh
        pool.submit(after_refresh.wait, 10)  # ... and the restart's first call after this
        before_refresh.set()
        await settle(lambda: bool(daemon.actions.pending))
        during = readiness()
        in_flight = daemon.status()["actionsInFlight"]
        after_refresh.set()
        await settle(lambda: any(e.type == "LivenessAction" for e in daemon.events.recent()))
        await settle(lambda: "web1" in names(daemon))
        after = readiness()
        await daemon.shutdown()
        return during, in_flight, after
    try:
        during, in_flight, after = run(scenario())
    finally:
        before_refresh.set()
        after_refresh.set()
    reason = "liveness action restart in progress (starting)"
    assert during == [(False, reason), (False, reason)]
    assert [p["action"] for p in in_flight.values()] == ["restart"]
    assert after == [(True, None), (True, None)]


def test_events_payload_is_json_serialisable(world):
    assert json.loads(json.dumps([e.to_dict() for e in world.events.recent()]))


def test_shutdown_waits_for_libvirt_calls_still_running_in_the_pools(world):
    """A libvirt call that outlives the event loop updates its connection's watch through
    libvirtaio on a closed loop (a traceback on every stop): shutdown waits for it."""
    ended = threading.Event()

    def slow_agent_call():
        time.sleep(0.3)
        ended.set()

    async def scenario():
        world.connection.agent_pool.submit(slow_agent_call)
        await world.shutdown()
        return ended.is_set()
    assert run(scenario())


def test_series_of_a_deleted_domain_are_forgotten_but_not_of_a_stopped_one(world):
    """Domains created and deleted all day must not grow the daemon's metrics; a
    domain that is only stopped keeps its counters."""
    async def scenario():
        for name in ("web1", "web2"):
            world.metrics.count_action(name, "restart")
            world.actions.backoff(dom(world, name).UUIDString())
        dom(world, "web1").destroy()
        dom(world, "web1").undefine()
        dom(world, "web2").destroy()  # stopped, still defined
        await settle(lambda: not {"web1", "web2"} & names(world))
        await world.forget_departed()
        return world.metrics.render().decode()
    web1_uuid = dom(world, "web1").UUIDString()
    text = run(scenario())
    assert 'domain="web2"' in text
    assert 'domain="web1"' not in text
    defined = {d.UUIDString() for d in world.conn.listAllDomains(0)}
    assert set(world.registry._adopt_locks) <= defined
    assert web1_uuid not in world.actions._backoffs
    assert len(world.actions._backoffs) == 1  # web2's: stopped, still defined
