"""A domain's readiness: one rule for status, status DOMAIN, /ready, metrics, events."""

from __future__ import annotations

import libvirt

from vmhealth import spec
from vmhealth.monitor.actions import PendingAction
from vmhealth.monitor.domain_monitor import DomainMonitor
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import StateChange
from vmhealth.monitor.libvirt_access import DomainState
from vmhealth.monitor.metrics import Metrics
from vmhealth.monitor.prober import ProbeSnapshot
from vmhealth.spec import ProbeKind

RUNNING = DomainState(libvirt.VIR_DOMAIN_RUNNING, 1)
PAUSED = DomainState(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)
MIGRATING = DomainState(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)


class Access:
    name = "web1"
    state = RUNNING

    def suppression_reason(self):
        return None


class Prober:
    def __init__(self, kinds):
        self.kinds = kinds

    def snapshot(self):
        return {kind: ProbeSnapshot(kind, kind is ProbeKind.LIVENESS, "initial", None,
                                    0, 0, False, False) for kind in self.kinds}

    def native_kinds(self):
        return set()


def monitor(pending=None):
    health = spec.HealthSpec(
        readiness_probe=spec.Probe(handler=spec.TcpSocket(port=80)),
        liveness_probe=spec.Probe(handler=spec.TcpSocket(port=22)))
    events, metrics = EventLog(100), Metrics()
    actions = {} if pending is None else pending
    m = DomainMonitor("u-1", 1, health, Access(), events=events, metrics=metrics,
                      on_liveness_failed=lambda *_: None,
                      pending_action=lambda uuid: actions.get(uuid))
    m.attach(Prober(health.probes()))
    return m, events, metrics


def flip(m, kind, healthy, reason="x"):
    m.on_state_change(StateChange(kind=kind, healthy=healthy, reason=reason, result=None))


def ready_metric(metrics):
    return metrics.registry.get_sample_value("vmhealth_domain_ready", {"domain": "web1"})


def test_paused_is_not_ready_and_resume_gives_the_probe_verdict_back():
    m, events, metrics = monitor()
    flip(m, ProbeKind.READINESS, True)
    assert m.ready and ready_metric(metrics) == 1
    m.access.state = PAUSED
    m.readiness_changed()
    entry = m.to_dict()
    assert not entry["ready"] and entry["notReadyReason"] == "domain paused by the user"
    assert ready_metric(metrics) == 0
    assert events.recent()[-1].type == "NotReady"
    m.access.state = RUNNING
    m.readiness_changed()
    assert m.ready and ready_metric(metrics) == 1
    assert events.recent()[-1].type == "Ready"


def test_a_migrations_pause_keeps_the_domain_ready():
    m, _, _ = monitor()
    flip(m, ProbeKind.READINESS, True)
    m.access.state = MIGRATING
    assert m.ready


def test_failed_liveness_and_an_action_in_flight_are_not_ready():
    pending = {}
    m, _, metrics = monitor(pending)
    flip(m, ProbeKind.READINESS, True)
    flip(m, ProbeKind.LIVENESS, False, "3 consecutive failures")
    assert m.to_dict()["notReadyReason"] == "liveness: 3 consecutive failures"
    assert ready_metric(metrics) == 0
    flip(m, ProbeKind.LIVENESS, True)
    assert m.ready
    pending["u-1"] = PendingAction("restart", "shutting down", 0.0)
    entry = m.to_dict()
    assert not entry["ready"] and entry["action"]["phase"] == "shutting down"
    assert "liveness action restart in progress" in entry["notReadyReason"]
