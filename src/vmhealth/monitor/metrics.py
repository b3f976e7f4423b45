"""Prometheus metrics of the daemon, in a registry of its own (served on /metrics).

Per-probe figures (results by outcome, durations) are kept by `ProbeFigures` in plain
dicts and turned into metric families only when /metrics is scraped: at 2,000 probes a
second, prometheus-client's labelled Counter and Histogram (a label lookup and a lock
per update) cost ~16 us per probe, several percent of a core (docs/probes.md).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from vmhealth.monitor.interfaces import ProbeResult
from vmhealth.spec import ProbeKind

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ProbeFigures:
    """vmhealth_probe_results_total and vmhealth_probe_duration_seconds, as a collector."""

    def __init__(self) -> None:
        # (domain, probe, outcome, counted) -> runs
        self.results: dict[tuple[str, str, str, str], int] = {}
        # probe -> [count per bucket (the last one +Inf, not cumulative), sum of seconds]
        self.durations: dict[str, list] = {}

    def observe(self, domain: str, probe: str, outcome: str, counted: str,
                seconds: float) -> None:
        key = (domain, probe, outcome, counted)
        self.results[key] = self.results.get(key, 0) + 1
        figures = self._figures(probe)
        figures[0][bisect_left(DURATION_BUCKETS, seconds)] += 1
        figures[1] += seconds

    def observe_many(self, domain: str, probe: str, outcome: str, counted: str, count: int,
                     buckets: tuple[int, ...], seconds: float) -> None:
        """`count` runs at once, their durations already counted per bucket."""
        key = (domain, probe, outcome, counted)
        self.results[key] = self.results.get(key, 0) + count
        figures = self._figures(probe)
        per_bucket = figures[0]
        for index, runs in enumerate(buckets):
            per_bucket[index] += runs
        figures[1] += seconds

    def _figures(self, probe: str) -> list:
        figures = self.durations.get(probe)
        if figures is None:
            figures = self.durations[probe] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0]
        return figures

    def retain_domains(self, keep: set[str]) -> None:
        """Drop the results of every domain not in `keep`."""
        for key in [key for key in self.results if key[0] not in keep]:
            del self.results[key]

    def collect(self) -> Iterator[Metric]:
        results = CounterMetricFamily(
            "vmhealth_probe_results", "Probe runs by outcome (counted=false: suppressed)",
            labels=["domain", "probe", "outcome", "counted"])
        for key, runs in list(self.results.items()):
            results.add_metric(key, runs)
        yield results
        durations = HistogramMetricFamily(
            "vmhealth_probe_duration_seconds", "How long probes took", labels=["probe"])
        for probe, (counts, total) in list(self.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(_bound, DURATION_BUCKETS), "+Inf"), counts):
                cumulative += count
                buckets.append((bound, cumulative))
            durations.add_metric([probe], buckets, total)
        yield durations


def _bound(value: float) -> str:
    return repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.probes = ProbeFigures()
        self.registry.register(self.probes)
        self.healthy = Gauge(
            "vmhealth_probe_healthy", "Published state per probe: 1 healthy, 0 not, -1 unknown",
            ["domain", "probe"], registry=self.registry)
        self.ready = Gauge(
            "vmhealth_domain_ready", "1 while the domain is ready (what /ready answers): "
            "probes, pause and liveness actions together", ["domain"], registry=self.registry)
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
        # The label values of every per-domain counter child made, so that the children
        # of a domain that no longer exists can be removed (retain_domains).
        self._counted: set[tuple[Counter, str, str]] = set()
        # Called before every render, to bring in figures kept elsewhere.
        self.before_render: list[Callable[[], None]] = []

    def count_action(self, domain: str, action: str) -> None:
        self._count(self.actions, domain, action)

    def count_watchdog(self, domain: str, action: str) -> None:
        self._count(self.watchdog, domain, action)

    def _count(self, counter: Counter, domain: str, action: str) -> None:
        counter.labels(domain, action).inc()
        self._counted.add((counter, domain, action))

    def retain_domains(self, keep: set[str]) -> None:
        """Forget every series of the domains not in `keep` (the names of the domains
        this host still defines or runs).

        A counter of a domain that still exists stays, across restarts and stops, as
        Prometheus expects; one of a domain that is gone would otherwise stay for the
        daemon's lifetime: with domains created and deleted all day, memory and the
        /metrics page would grow without end.
        """
        self.probes.retain_domains(keep)
        for counted in [c for c in self._counted if c[1] not in keep]:
            counter, domain, action = counted
            counter.remove(domain, action)
            self._counted.discard(counted)

    def observe_result(self, domain: str, kind: ProbeKind, result: ProbeResult,
                       counted: bool) -> None:
        self.probes.observe(domain, kind.short, result.outcome.value,
                            "true" if counted else "false", result.duration)

    def observe_repeated(self, domain: str, kind: ProbeKind, count: int,
                         buckets: tuple[int, ...], seconds: float) -> None:
        """Successes the native lane repeated (counted, by definition)."""
        self.probes.observe_many(domain, kind.short, "success", "true", count, buckets, seconds)

    def set_healthy(self, domain: str, kind: ProbeKind, healthy: bool | None) -> None:
        self.healthy.labels(domain, kind.short).set(-1 if healthy is None else int(healthy))

    def set_ready(self, domain: str, ready: bool) -> None:
        self.ready.labels(domain).set(int(ready))

    def forget_domain(self, domain: str) -> None:
        """Drop a domain's gauges once it is no longer monitored (counters stay)."""
        try:
            self.ready.remove(domain)
        except KeyError:
            pass
        for kind in ProbeKind:
            try:
                self.healthy.remove(domain, kind.short)
            except KeyError:
                pass

    def render(self) -> bytes:
        for refresh in self.before_render:
            refresh()  # e.g. the native lane's silent successes
        return generate_latest(self.registry)
