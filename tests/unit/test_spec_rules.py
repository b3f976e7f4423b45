"""vmhealth.spec_rules (the plain-data rules) and vmhealth.spec (the typed model built
from them) agree: allowed values, defaults, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vmhealth
from vmhealth import spec, spec_rules
from vmhealth.metadata import checked_spec_data_from_metadata, spec_from_metadata


@pytest.mark.parametrize("enum_type,allowed", [
    (spec.Scheme, spec_rules.SCHEMES),
    (spec.WatchdogModel, spec_rules.WATCHDOG_MODELS),
    (spec.WatchdogAction, spec_rules.WATCHDOG_ACTIONS),
    (spec.LivenessAction, spec_rules.LIVENESS_ACTIONS),
    (spec.ProbeKind, spec_rules.PROBE_KINDS),
    (spec.RunStrategy, spec_rules.RUN_STRATEGIES),
])
def test_the_enums_allow_exactly_the_rules_values_in_the_same_order(enum_type, allowed):
    assert tuple(member.value for member in enum_type) == allowed


def test_the_handler_models_cover_exactly_the_rules_handlers():
    assert tuple(spec.HANDLER_FIELDS) == spec_rules.HANDLERS
    examples = {"httpGet": {"port": 80}, "tcpSocket": {"port": 22},
                "exec": {"command": ["true"]}, "guestAgentPing": {}}
    assert tuple(examples) == spec_rules.HANDLERS
    for name, fields in examples.items():
        handler = spec.parse_spec({"livenessProbe": {name: fields}}).liveness_probe.handler
        assert type(handler) is spec.HANDLER_FIELDS[name]


def test_the_model_defaults_are_the_rules_defaults():
    empty = spec_rules.check_spec({})
    assert spec.spec_from_checked(empty) == spec.HealthSpec()
    watchdog = spec_rules.check_spec({"watchdog": {}})["watchdog"]
    assert spec.watchdog_from_checked(watchdog) == spec.Watchdog()
    probe = spec_rules.check_probe({"tcpSocket": {"port": 22}}, "p", "livenessProbe")
    assert spec.probe_from_checked(probe) == spec.Probe(handler=spec.TcpSocket(port=22))
    http = spec_rules.check_handler("httpGet", {"port": 80}, "h")
    assert spec.parse_spec({"livenessProbe": {"httpGet": {"port": 80}}}
                           ).liveness_probe.handler == spec.HttpGet(port=80)
    assert http["scheme"] == spec.HttpGet(port=80).scheme.value


def test_spec_errors_are_one_class():
    assert spec.SpecError is spec_rules.SpecError
    with pytest.raises(spec.SpecError) as caught:
        spec_rules.check_spec({"watchdog": {"action": "explode"}})
    assert caught.value.path == "spec.watchdog.action"
    assert str(caught.value) == ("spec.watchdog.action: must be one of reset, shutdown, "
                                 "poweroff, pause, none, dump, inject-nmi, got 'explode'")


FULL = {
    "livenessProbe": {"httpGet": {"port": 8080, "path": "/healthz", "scheme": "HTTPS",
                                  "httpHeaders": [{"name": "X-A", "value": "1"}]},
                      "periodSeconds": 5, "terminationGracePeriodSeconds": 3},
    "readinessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "successThreshold": 2},
    "startupProbe": {"guestAgentPing": {}, "failureThreshold": 30},
    "watchdog": {"model": "ib700", "action": "poweroff"},
    "terminationGracePeriodSeconds": 10,
    "onLivenessFailure": "reset",
    "runStrategy": "RerunOnFailure",
    "guestAgentPingPaused": True,
    "userData": "#cloud-config\n",
}


def test_a_full_spec_survives_the_round_trip_through_both_forms():
    parsed = spec.parse_spec(FULL)
    assert parsed == spec.spec_from_checked(spec_rules.check_spec(FULL))
    assert spec.parse_spec(spec.spec_to_dict(parsed)) == parsed
    assert parsed.watchdog == spec.Watchdog(model=spec.WatchdogModel.IB700,
                                            action=spec.WatchdogAction.POWEROFF)


@pytest.mark.parametrize("text", ['{"watchdog": {"model": "i6300esb", "action": "pause"}}',
                                  '{"livenessProbe": {"tcpSocket": {"port": 0}}}',
                                  '{"readinessProbe": {"exec": {"command": []}}}', "[1]", "{"])
def test_the_hook_and_the_model_get_the_same_verdict_from_metadata(text):
    def verdict(decode):
        try:
            return ("ok", decode("1", text))
        except ValueError as exc:
            return ("refused", type(exc).__name__, str(exc))

    plain, typed = verdict(checked_spec_data_from_metadata), verdict(spec_from_metadata)
    if plain[0] == "ok":
        assert typed == ("ok", spec.spec_from_checked(plain[1]))
    else:
        assert plain == typed


def test_the_rules_import_nothing_heavy():
    package_parent = str(Path(vmhealth.__file__).parents[1])
    probe = (f"import sys; sys.path.insert(0, {package_parent!r}); "
             "from vmhealth.metadata import checked_spec_data_from_metadata as c; "
             "c('1', '{\"watchdog\": {}}'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('enum', 'dataclasses', 'typing', 're', 'inspect', 'json')))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# Kubernetes' per-kind rules (validateLivenessProbe, validateStartupProbe,
# validateReadinessProbe in pkg/apis/core/validation/validation.go).

@pytest.mark.parametrize("kind", ["livenessProbe", "startupProbe"])
def test_success_threshold_must_be_1_for_liveness_and_startup(kind):
    with pytest.raises(spec.SpecError) as caught:
        spec_rules.check_spec({kind: {"guestAgentPing": {}, "successThreshold": 2}})
    assert str(caught.value) == (f"spec.{kind}.successThreshold: must be 1 for {kind} "
                                 "(Kubernetes rule), got 2")
    assert spec_rules.check_spec({kind: {"guestAgentPing": {}, "successThreshold": 1}})


def test_readiness_may_ask_for_several_successes():
    checked = spec_rules.check_spec({"readinessProbe": {"guestAgentPing": {},
                                                        "successThreshold": 2}})
    assert checked["readiness_probe"]["success_threshold"] == 2


def test_a_grace_period_override_is_refused_on_readiness_only():
    with pytest.raises(spec.SpecError) as caught:
        spec_rules.check_spec({"readinessProbe": {"guestAgentPing": {},
                                                  "terminationGracePeriodSeconds": 5}})
    assert str(caught.value) == ("spec.readinessProbe.terminationGracePeriodSeconds: is only "
                                 "allowed on livenessProbe and startupProbe")
    for kind, attr in (("livenessProbe", "liveness_probe"), ("startupProbe", "startup_probe")):
        checked = spec_rules.check_spec({kind: {"guestAgentPing": {},
                                                "terminationGracePeriodSeconds": 5}})
        assert checked[attr]["termination_grace_period_seconds"] == 5
