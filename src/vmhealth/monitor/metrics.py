"""Prometheus metrics of the daemon, in a registry of its own (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.spec import ProbeKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.probe_results = Counter(
            "vmhealth_probe_results", "Probe runs by outcome (counted=false: suppressed)",
            ["domain", "probe", "outcome", "counted"], registry=self.registry)
        self.probe_duration = Histogram(
            "vmhealth_probe_duration_seconds", "How long probes took",
            ["probe"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.healthy = Gauge(
            "vmhealth_probe_healthy", "Published state per probe: 1 healthy, 0 not, -1 unknown",
            ["domain", "probe"], registry=self.registry)
        self.actions = Counter(
            "vmhealth_liveness_actions", "Liveness actions taken (restart, reset, ...)",
            ["domain", "action"], registry=self.registry)
        self.watchdog = Counter(
            "vmhealth_watchdog_events", "libvirt watchdog events by action",
            ["domain", "action"], registry=self.registry)
        self.monitored = Gauge(
            "vmhealth_monitored_domains", "Domains the daemon monitors", registry=self.registry)
        self.libvirt_connected = Gauge(
            "vmhealth_libvirt_connected", "1 while connected to libvirt", registry=self.registry)

    def observe_result(self, domain: str, kind: ProbeKind, result: ProbeResult,
                       counted: bool) -> None:
        self.probe_results.labels(domain, kind.short, result.outcome.value,
                                  str(counted).lower()).inc()
        self.probe_duration.labels(kind.short).observe(result.duration)

    def set_healthy(self, domain: str, kind: ProbeKind, healthy: bool | None) -> None:
        self.healthy.labels(domain, kind.short).set(-1 if healthy is None else int(healthy))

    def forget_domain(self, domain: str) -> None:
        """Drop a domain's gauges once it is no longer monitored (counters stay)."""
        for kind in ProbeKind:
            try:
                self.healthy.remove(domain, kind.short)
            except KeyError:
                pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
