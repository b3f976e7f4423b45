"""KubeVirt run strategies and the guest-agent ping pause: read from a manifest or a
bare spec into the HealthSpec, shown by `vmhealth show`, refused with the fix where
they have no meaning on plain libvirt."""

from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from vmhealth import spec_rules
from vmhealth.cli import Context, main
from vmhealth.manifest import load_manifest
from vmhealth.spec import RunStrategy, SpecError, parse_spec, spec_to_dict

VM = """apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: web1
%(vm_annotations)sspec:
%(strategy)s  template:
%(template_metadata)s    spec:
      readinessProbe: {guestAgentPing: {}}
"""


def vm(strategy: str = "", template_annotations: str = "", vm_annotations: str = ""):
    template_metadata = ""
    if template_annotations:
        template_metadata = f"    metadata:\n      annotations: {{{template_annotations}}}\n"
    return load_manifest(io.StringIO(VM % {
        "strategy": f"  {strategy}\n" if strategy else "",
        "template_metadata": template_metadata,
        "vm_annotations": (f"  annotations: {{{vm_annotations}}}\n" if vm_annotations
                           else "")}))


def vmi(annotations: str = ""):
    metadata = f"  annotations: {{{annotations}}}\n" if annotations else ""
    return load_manifest(io.StringIO(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n"
        f"  name: web1\n{metadata}spec:\n  livenessProbe: {{guestAgentPing: {{}}}}\n"))


# -- run strategies ------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["Always", "RerunOnFailure", "Manual", "Halted", "Once"])
def test_a_vm_run_strategy_is_read_as_it_is(strategy):
    loaded = vm(f"runStrategy: {strategy}")
    assert loaded.spec.run_strategy is RunStrategy(strategy)
    assert loaded.warnings == ()
    assert spec_to_dict(loaded.spec)["runStrategy"] == strategy


@pytest.mark.parametrize(("running", "meant"), [("true", "Always"), ("false", "Halted")])
def test_running_means_what_kubevirt_says_with_a_warning(running, meant):
    loaded = vm(f"running: {running}")
    assert loaded.spec.run_strategy is RunStrategy(meant)
    assert [str(w) for w in loaded.warnings] == [
        f"spec.running: is deprecated in KubeVirt; it means runStrategy: {meant}, write that"]


def test_without_a_strategy_nothing_is_started_again():
    for loaded in (vm(), vmi(), load_manifest(io.StringIO("watchdog: {}\n"))):
        assert loaded.spec.run_strategy is RunStrategy.MANUAL
        assert not loaded.spec.run_strategy.restarts_after_failure
        assert not loaded.spec.run_strategy.restarts_after_guest_shutdown


@pytest.mark.parametrize(("strategy", "message"), [
    ("runStrategy: WaitAsReceiver\n  running: true",
     "spec.running: and spec.runStrategy are mutually exclusive, as in KubeVirt; keep "
     "runStrategy (running is deprecated)"),
    ("runStrategy: WaitAsReceiver",
     "spec.runStrategy: WaitAsReceiver waits for a KubeVirt decentralized live migration, "
     "which plain libvirt has no counterpart of; use one of Always, RerunOnFailure, Manual, "
     "Halted, Once (README, Run strategies)"),
    ("runStrategy: always",
     "spec.runStrategy: must be one of Always, RerunOnFailure, Manual, Halted, Once, got "
     "'always'"),
    ("running: 'yes'", "spec.running: must be true or false, got 'yes'"),
])
def test_strategies_without_a_meaning_here_are_refused_naming_the_field(strategy, message):
    with pytest.raises(SpecError) as caught:
        vm(strategy)
    assert str(caught.value).startswith(message)


def test_a_bare_spec_takes_a_run_strategy_and_names_the_field_when_wrong():
    loaded = load_manifest(io.StringIO("runStrategy: RerunOnFailure\n"))
    assert loaded.spec.run_strategy is RunStrategy.RERUN_ON_FAILURE
    with pytest.raises(SpecError, match=r"^runStrategy: WaitAsReceiver waits"):
        load_manifest(io.StringIO("runStrategy: WaitAsReceiver\n"))


@pytest.mark.parametrize(("strategy", "after_failure", "after_shutdown"), [
    ("Always", True, True), ("RerunOnFailure", True, False), ("Manual", False, False),
    ("Halted", False, False), ("Once", False, False),
])
def test_the_meaning_of_each_strategy(strategy, after_failure, after_shutdown):
    meant = RunStrategy(strategy)
    assert (meant.restarts_after_failure, meant.restarts_after_guest_shutdown) == \
        (after_failure, after_shutdown)


def test_every_strategy_kubevirt_has_is_either_honoured_or_refused():
    # KubeVirt's VirtualMachineRunStrategy values (types.go), "" being its placeholder.
    kubevirt = {"Always", "Halted", "Manual", "RerunOnFailure", "Once", "WaitAsReceiver"}
    assert kubevirt == set(spec_rules.RUN_STRATEGIES) | set(
        spec_rules.UNSUPPORTED_RUN_STRATEGIES)


# -- the guest-agent ping pause ------------------------------------------------------

PAUSE = "kubevirt.io/pause-guest-agent-probes"


@pytest.mark.parametrize(("value", "paused"), [
    ("'true'", True), ("'True'", True), ("'1'", True), ("'t'", True), ("true", True),
    ("'false'", False), ("'0'", False), ("'F'", False),
])
def test_the_pause_annotation_is_read_as_kubevirt_reads_it(value, paused):
    loaded = vmi(f"{PAUSE}: {value}")
    assert loaded.spec.guest_agent_ping_paused is paused
    assert loaded.warnings == ()
    assert vm("runStrategy: Always", f"{PAUSE}: {value}").spec.guest_agent_ping_paused \
        is paused


def test_a_value_that_is_not_a_boolean_is_false_with_a_warning():
    loaded = vmi(f"{PAUSE}: 'yes'")
    assert loaded.spec.guest_agent_ping_paused is False
    assert [str(w) for w in loaded.warnings] == [
        f"metadata.annotations.{PAUSE}: 'yes' is not true or false; taken as false, as "
        "KubeVirt does"]


def test_on_a_vm_the_annotation_acts_from_the_template_only():
    loaded = vm("runStrategy: Always", vm_annotations=f"{PAUSE}: 'true'")
    assert loaded.spec.guest_agent_ping_paused is False
    assert [w.path for w in loaded.warnings] == [f"metadata.annotations.{PAUSE}"]
    assert "put it under spec.template.metadata.annotations" in loaded.warnings[0].message


def test_a_bare_spec_pauses_with_a_boolean_only():
    assert parse_spec({"guestAgentPingPaused": True}).guest_agent_ping_paused is True
    with pytest.raises(SpecError, match=r"spec.guestAgentPingPaused: must be true or false, "
                                        r"not a string \('true'\)"):
        parse_spec({"guestAgentPingPaused": "true"})


def test_show_spells_out_both_fields(conn):
    runner, ctx = CliRunner(), Context(uri=None, conn=conn)
    applied = runner.invoke(main, ["apply", "web1", "-f", "-"], obj=ctx,
                            input="readinessProbe: {guestAgentPing: {}}\n"
                                  "runStrategy: Always\nguestAgentPingPaused: true\n")
    assert applied.exit_code == 0, applied.output
    shown = runner.invoke(main, ["show", "web1"], obj=ctx).output
    assert "runStrategy: Always\n" in shown and "guestAgentPingPaused: true\n" in shown
    runner.invoke(main, ["apply", "web1", "-f", "-"], obj=ctx,
                  input="readinessProbe: {guestAgentPing: {}}\n")
    shown = runner.invoke(main, ["show", "web1"], obj=ctx).output
    assert "runStrategy: Manual\n" in shown and "guestAgentPingPaused: false\n" in shown
