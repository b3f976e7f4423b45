"""onLivenessFailure: report (a cluster manager acts): the spec's rules, the daemon
records the failure and never acts, and `apply --cluster-managed` warns."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.unit.daemon_support import FakeProber, domain_xml, failure, run, settle

from vmhealth.cli import Context, main
from vmhealth.manifest import load_manifest
from vmhealth.monitor.config import DaemonConfig
from vmhealth.monitor.daemon import Daemon
from vmhealth.spec import LivenessAction, SpecError, parse_spec

LIVENESS = {"livenessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1}}
REPORT = {**LIVENESS, "onLivenessFailure": "report"}


def test_report_is_accepted_with_the_run_strategies_that_start_nothing():
    for strategy in ("Manual", "Halted", "Once"):
        spec = parse_spec({**REPORT, "runStrategy": strategy})
        assert spec.on_liveness_failure is LivenessAction.REPORT


@pytest.mark.parametrize("strategy", ["Always", "RerunOnFailure"])
def test_report_with_a_restarting_run_strategy_is_refused(strategy):
    with pytest.raises(SpecError) as raised:
        parse_spec({**REPORT, "runStrategy": strategy})
    assert raised.value.path == "spec.runStrategy"
    assert "leaves that to the cluster; use Manual" in str(raised.value)


def test_kubevirt_annotation_says_report():
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "web1",
                        "annotations": {"vmhealth.dev/on-liveness-failure": "report"}},
           "spec": {"livenessProbe": LIVENESS["livenessProbe"], "domain": {"devices": {}}}}
    loaded = load_manifest(io.StringIO(yaml.safe_dump(vmi)), domain_name="web1")
    assert loaded.spec.on_liveness_failure is LivenessAction.REPORT


def test_daemon_records_the_failure_and_never_acts(tmp_path: Path):
    driver = tmp_path / "driver.xml"
    driver.write_text("<node>" + domain_xml("web1", REPORT) + "</node>")
    daemon = Daemon(DaemonConfig(libvirt_uri=f"test://{driver}",
                                 spool_dir=str(tmp_path / "spool")), prober_factory=FakeProber)

    async def scenario():
        await daemon.start()
        web1 = daemon.conn.lookupByName("web1")
        old_id = web1.ID()
        monitor = daemon.find("web1")
        for _ in range(2):  # every failureThreshold crossing is reported, none acted on
            monitor.on_liveness_failed(failure())
        await settle(lambda: sum(e.type == "LivenessFailed"
                                 for e in daemon.events.recent()) == 2)
        assert daemon.conn.lookupByName("web1").ID() == old_id
        assert not daemon.actions.pending
        assert daemon.domain_status("web1")["onLivenessFailure"] == "report"
        metrics = daemon.metrics.render().decode()
        await daemon.shutdown()
        return daemon.events.recent("web1"), metrics

    events, metrics = run(scenario())
    failed = [e for e in events if e.type == "LivenessFailed"]
    assert failed[-1].fields["action"] == "report"
    assert not [e for e in events if e.type in ("LivenessAction", "LivenessActionFailed",
                                                "RestartBackOff")]
    assert 'vmhealth_liveness_actions_total{action="report",domain="web1"} 2.0' in metrics


@pytest.fixture
def apply_run(conn):
    def invoke(*args, input=None):
        runner = CliRunner(mix_stderr=False)
        return runner.invoke(main, list(args), obj=Context(uri=None, conn=conn), input=input)
    return invoke


@pytest.mark.parametrize("spec, warned", [
    ({**LIVENESS, "onLivenessFailure": "restart"}, ["onLivenessFailure: restart"]),
    ({**LIVENESS, "onLivenessFailure": "poweroff", "runStrategy": "Always"},
     ["onLivenessFailure: poweroff", "runStrategy: Always"]),
    (REPORT, []),
    ({**LIVENESS, "onLivenessFailure": "none"}, []),
])
def test_apply_cluster_managed_warns_when_vmhealth_would_act(apply_run, spec, warned):
    result = apply_run("apply", "web1", "--cluster-managed", "-f", "-",
                       input=yaml.safe_dump(spec))
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cluster-managed" in line]
    assert len(lines) == len(warned)
    for line, field in zip(lines, warned):
        assert line.startswith(f"web1: warning: cluster-managed: {field}")


def test_apply_without_the_flag_says_nothing_of_clusters(apply_run):
    result = apply_run("apply", "web1", "-f", "-", input=yaml.safe_dump(LIVENESS))
    assert result.exit_code == 0
    assert "cluster" not in result.stderr
