"""What a Prometheus server gets from vmhealth: the alert rules shipped in
host/prometheus/ (unit-tested by promtool) and the daemon's /metrics page (checked by
promtool). Without promtool (Debian package `prometheus`) these skip, except under
CI=true, where a missing promtool is a failure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tests.ci import missing

from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.metrics import Metrics
from vmhealth.spec import ProbeKind

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "host" / "prometheus" / "vmhealth-alerts.yml"
RULE_TESTS = sorted((REPO / "tests" / "data" / "prometheus").glob("*.test.yml"))
TIMEOUT = 120  # seconds


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = ("promtool not installed (Debian package prometheus; "
                   "scripts/install-deps installs it from scripts/debian-packages.txt)")
        missing(message)
    return path


def run(argv: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          **options)


def rendered_page() -> str:
    """The daemon's /metrics with a series in every family."""
    metrics = Metrics()
    result = ProbeResult(Outcome.FAILURE, "connection refused", 0.02, 0.0)
    metrics.observe_result("web1", ProbeKind.LIVENESS, result, True)
    metrics.observe_result("web1", ProbeKind.READINESS, result, False)
    metrics.set_healthy("web1", ProbeKind.READINESS, False)
    metrics.set_healthy("web1", ProbeKind.STARTUP, None)
    metrics.count_action("web1", "restart")
    metrics.count_watchdog("web1", "poweroff")
    metrics.monitored.set(1)
    metrics.libvirt_connected.set(1)
    return metrics.render().decode()


def test_alert_rules_are_valid(promtool):
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_unit_tests(promtool):
    assert RULE_TESTS, "no tests/data/prometheus/*.test.yml"
    # promtool finds rule_files relative to the test file.
    result = run([promtool, "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_is_unit_tested():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    tested = {case["alertname"] for path in RULE_TESTS
              for test in yaml.safe_load(path.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert alerts == tested


def test_rules_use_only_metrics_the_daemon_exports():
    page = rendered_page()
    exported = set(re.findall(r"^# TYPE (\S+) ", page, re.MULTILINE))
    exported |= {f"{name}_total" for name in exported}  # counters' samples
    used = set(re.findall(r"\bvmhealth_\w+", RULES.read_text()))
    assert used and used <= exported, sorted(used - exported)


def test_metrics_page_passes_promtool_check_metrics(promtool):
    page = rendered_page()
    assert 'vmhealth_watchdog_events_total{action="poweroff",domain="web1"} 1.0' in page
    result = run([promtool, "check", "metrics"], input=page)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
