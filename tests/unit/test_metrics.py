"""The per-probe metrics kept in plain dicts render as proper Prometheus families."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.metrics import Metrics
from vmhealth.spec import ProbeKind


def samples(metrics: Metrics) -> dict:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def observe(metrics, kind, outcome, seconds, counted=True, domain="web1"):
    metrics.observe_result(domain, kind, ProbeResult(outcome, "m", seconds, 0.0), counted)


def test_results_counted_by_domain_probe_outcome_and_counted():
    metrics = Metrics()
    observe(metrics, ProbeKind.READINESS, Outcome.SUCCESS, 0.001)
    observe(metrics, ProbeKind.READINESS, Outcome.SUCCESS, 0.002)
    observe(metrics, ProbeKind.LIVENESS, Outcome.FAILURE, 0.3, counted=False)
    observe(metrics, ProbeKind.LIVENESS, Outcome.FAILURE, 0.3, domain="db1")
    got = samples(metrics)
    key = ("vmhealth_probe_results_total",
           (("counted", "true"), ("domain", "web1"), ("outcome", "success"),
            ("probe", "readiness")))
    assert got[key] == 2
    assert got[("vmhealth_probe_results_total",
                (("counted", "false"), ("domain", "web1"), ("outcome", "failure"),
                 ("probe", "liveness")))] == 1
    assert got[("vmhealth_probe_results_total",
                (("counted", "true"), ("domain", "db1"), ("outcome", "failure"),
                 ("probe", "liveness")))] == 1


def test_duration_histogram_is_cumulative_with_le_inclusive():
    metrics = Metrics()
    for seconds in (0.001, 0.005, 0.02, 3.0, 50.0):
        observe(metrics, ProbeKind.READINESS, Outcome.SUCCESS, seconds)
    got = samples(metrics)

    def bucket(le):
        return got[("vmhealth_probe_duration_seconds_bucket",
                    (("le", le), ("probe", "readiness")))]

    assert bucket("0.005") == 2  # 0.005 itself is "less than or equal"
    assert bucket("0.025") == 3
    assert bucket("2.5") == 3
    assert bucket("5.0") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert got[("vmhealth_probe_duration_seconds_count", (("probe", "readiness"),))] == 5
    assert abs(got[("vmhealth_probe_duration_seconds_sum", (("probe", "readiness"),))]
               - 53.026) < 1e-9


def domains_in(metrics: Metrics) -> set[str]:
    return {dict(labels).get("domain") for _, labels in samples(metrics)} - {None}


def test_retain_domains_forgets_every_series_of_the_others():
    metrics = Metrics()
    for domain in ("web1", "gone1"):
        observe(metrics, ProbeKind.LIVENESS, Outcome.FAILURE, 0.3, domain=domain)
        metrics.count_action(domain, "restart")
        metrics.count_watchdog(domain, "poweroff")
    metrics.set_healthy("web1", ProbeKind.LIVENESS, True)
    assert domains_in(metrics) == {"web1", "gone1"}
    metrics.retain_domains({"web1"})
    assert domains_in(metrics) == {"web1"}
    got = samples(metrics)
    assert got[("vmhealth_liveness_actions_total",
                (("action", "restart"), ("domain", "web1")))] == 1
    # A domain of the same name defined again later starts from zero.
    metrics.count_action("gone1", "restart")
    assert samples(metrics)[("vmhealth_liveness_actions_total",
                             (("action", "restart"), ("domain", "gone1")))] == 1


def test_repeated_successes_count_and_fill_the_histogram_before_render():
    metrics = Metrics()
    observe(metrics, ProbeKind.READINESS, Outcome.SUCCESS, 0.001)
    pending = [(5, (4, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0.05)]

    def fold():  # as the daemon folds the native lane's silent successes
        while pending:
            metrics.observe_repeated("web1", ProbeKind.READINESS, *pending.pop())

    metrics.before_render.append(fold)
    got = samples(metrics)
    assert got[("vmhealth_probe_results_total",
                (("counted", "true"), ("domain", "web1"), ("outcome", "success"),
                 ("probe", "readiness")))] == 6
    assert got[("vmhealth_probe_duration_seconds_bucket",
                (("le", "0.005"), ("probe", "readiness")))] == 5
    assert got[("vmhealth_probe_duration_seconds_bucket",
                (("le", "0.025"), ("probe", "readiness")))] == 6
    assert abs(got[("vmhealth_probe_duration_seconds_sum", (("probe", "readiness"),))]
               - 0.051) < 1e-9
