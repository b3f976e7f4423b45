"""Real KubeVirt manifests apply unchanged: what Kubernetes/KubeVirt accept (a timeout
above the period, 0 for a default, named ports, a relative HTTP path) vmhealth accepts
with the same meaning, and tells the operator what deserves a word."""

from __future__ import annotations

import inspect
import io

import pytest
from click.testing import CliRunner

from vmhealth.cli import Context, main
from vmhealth.manifest import load_manifest
from vmhealth.spec import HttpGet, SpecError, SpecWarning, TcpSocket, parse_spec

VMI = """apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: web1}
spec:
  domain:
    devices:
      interfaces:
      - name: default
        masquerade: {}
        ports:
        - {name: http, port: 8080}
        - {port: 22}
        - {name: http, port: 9999}
      - name: second
        bridge: {}
        ports: [{name: ssh, protocol: TCP, port: 2222}]
%s"""


def load(text: str):
    return load_manifest(io.StringIO(text))


def probe(body: str, kind: str = "readinessProbe") -> str:
    return f"  {kind}:\n" + "".join(f"    {line}\n" for line in body.splitlines())


# -- timeoutSeconds above periodSeconds --------------------------------------------

def test_a_timeout_above_the_period_is_accepted_with_a_warning():
    loaded = load(VMI % probe("tcpSocket: {port: 22}\nperiodSeconds: 2\ntimeoutSeconds: 5"))
    assert loaded.spec.readiness_probe.timeout_seconds == 5
    assert loaded.spec.readiness_probe.period_seconds == 2
    [warning] = loaded.warnings
    assert warning.path == "spec.readinessProbe.timeoutSeconds"
    assert warning.message.startswith("5 is above periodSeconds (2); accepted, as "
                                      "Kubernetes does")


def test_a_bare_spec_warning_names_the_field_as_its_errors_do():
    loaded = load("livenessProbe: {guestAgentPing: {}, timeoutSeconds: 20}\n")
    assert [w.path for w in loaded.warnings] == ["livenessProbe.timeoutSeconds"]
    assert "20 is above periodSeconds (10)" in str(loaded.warnings[0])


def test_no_warning_for_a_timeout_within_the_period():
    assert load(VMI % probe("tcpSocket: {port: 22}\nperiodSeconds: 5\n"
                            "timeoutSeconds: 5")).warnings == ()


def test_the_warnings_list_is_optional_and_filled_by_the_rules():
    data = {"startupProbe": {"guestAgentPing": {}, "periodSeconds": 1, "timeoutSeconds": 3}}
    parse_spec(data)  # no list: nothing to say, and no error
    warnings: list[SpecWarning] = []
    parse_spec(data, warnings=warnings)
    assert [w.path for w in warnings] == ["spec.startupProbe.timeoutSeconds"]


def _runner() -> CliRunner:
    # click 8.1 mixes stderr into output unless told not to; 8.2 keeps both apart.
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def test_apply_prints_the_warning_on_stderr_and_applies(conn):
    manifest = VMI % probe("httpGet: {port: http}\nperiodSeconds: 3\ntimeoutSeconds: 4")
    result = _runner().invoke(main, ["apply", "web1", "-f", "-"], input=manifest,
                              obj=Context(uri=None, conn=conn))
    assert result.exit_code == 0, result.output
    assert result.stderr == ("web1: warning: spec.readinessProbe.timeoutSeconds: 4 is "
                             "above periodSeconds (3); accepted, as Kubernetes does: a "
                             "probe still running when the next is due makes that one "
                             "wait for the next period (lower timeoutSeconds or raise "
                             "periodSeconds to probe every period)\n")
    shown = _runner().invoke(main, ["show", "web1"], obj=Context(uri=None, conn=conn))
    assert "port: 8080" in shown.output and "timeoutSeconds: 4" in shown.output


# -- 0 means the default --------------------------------------------------------------

@pytest.mark.parametrize(("field", "attr", "default"), [
    ("periodSeconds", "period_seconds", 10),
    ("timeoutSeconds", "timeout_seconds", 1),
    ("successThreshold", "success_threshold", 1),
    ("failureThreshold", "failure_threshold", 3),
])
def test_zero_means_the_kubernetes_default(field, attr, default):
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        spec = parse_spec({kind: {"guestAgentPing": {}, field: 0}})
        assert getattr(spec.probes()[next(iter(spec.probes()))], attr) == default
    with pytest.raises(SpecError) as caught:
        parse_spec({"readinessProbe": {"guestAgentPing": {}, field: -1}})
    assert caught.value.path == f"spec.readinessProbe.{field}"
    assert caught.value.message == (f"must be between 1 and 2147483647 (or 0 for the "
                                    f"default, {default}), got -1")


def test_zero_is_itself_the_value_where_it_is_not_a_default():
    spec = parse_spec({"livenessProbe": {"guestAgentPing": {}, "initialDelaySeconds": 0,
                                         "terminationGracePeriodSeconds": 0}})
    assert spec.liveness_probe.initial_delay_seconds == 0
    assert spec.liveness_probe.termination_grace_period_seconds == 0


def test_a_kubevirt_manifest_with_zeros_gives_the_defaults():
    spec = load(VMI % probe("tcpSocket: {port: 22}\ninitialDelaySeconds: 0\n"
                            "periodSeconds: 0\ntimeoutSeconds: 0\nsuccessThreshold: 0\n"
                            "failureThreshold: 0", "livenessProbe")).spec
    assert spec.liveness_probe == parse_spec(
        {"livenessProbe": {"tcpSocket": {"port": 22}}}).liveness_probe


def test_null_timing_fields_are_absent_ones():
    spec = parse_spec({"readinessProbe": {"guestAgentPing": {}, "periodSeconds": None}})
    assert spec.readiness_probe.period_seconds == 10


# -- named ports --------------------------------------------------------------------

def test_named_ports_resolve_through_the_interfaces_ports():
    spec = load(VMI % (probe("httpGet: {port: http, path: /ready}")
                       + probe("tcpSocket: {port: ssh}", "livenessProbe"))).spec
    # The first declaration of a name wins, as in kubelet's lookup.
    assert spec.readiness_probe.handler == HttpGet(port=8080, path="/ready")
    assert spec.liveness_probe.handler == TcpSocket(port=2222)


def test_a_virtual_machine_resolves_names_in_its_template():
    vm = ("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nspec:\n  runStrategy: Always\n"
          "  template:\n    spec:\n      domain:\n        devices:\n          interfaces:\n"
          "          - {name: default, ports: [{name: web, port: 80}]}\n"
          "      readinessProbe: {httpGet: {port: web}}\n"
          "      livenessProbe: {tcpSocket: {port: nope}}\n")
    with pytest.raises(SpecError) as caught:
        load(vm)
    assert caught.value.path == "spec.template.spec.livenessProbe.tcpSocket.port"
    assert caught.value.message.startswith(
        "names port 'nope', which is not declared in spec.template.spec.domain.devices."
        "interfaces[].ports[] (declared: web); declare it there ({name: nope, port: N}) "
        "or write the port number")
    ok = load(vm.replace("{port: nope}", "{port: web}")).spec
    assert ok.readiness_probe.handler.port == ok.liveness_probe.handler.port == 80


def test_an_undeclared_name_lists_the_declared_ones():
    with pytest.raises(SpecError, match=r"^spec.readinessProbe.httpGet.port: names port "
                                        r"'https', .*\(declared: http, ssh\)"):
        load(VMI % probe("httpGet: {port: https}"))


@pytest.mark.parametrize(("declared", "message"), [
    ("0", "must be between 1 and 65535, got 0"),
    ("eighty", "must be an integer, not a string ('eighty')"),
])
def test_a_name_declared_with_a_bad_port_points_at_the_declaration(declared, message):
    text = VMI.replace("{name: http, port: 8080}", f"{{name: http, port: {declared}}}")
    with pytest.raises(SpecError) as caught:
        load(text % probe("httpGet: {port: http}"))
    assert caught.value.path == "spec.domain.devices.interfaces[0].ports[0].port"
    assert caught.value.message.startswith(message)


def test_a_bare_spec_has_no_names_to_resolve():
    with pytest.raises(SpecError) as caught:
        load("readinessProbe: {httpGet: {port: http}}\n")
    assert caught.value.path == "readinessProbe.httpGet.port"
    assert "write the port number" in caught.value.message


# -- relative HTTP paths --------------------------------------------------------------

@pytest.mark.parametrize(("given", "requested"), [
    ("healthz", "/healthz"), ("", "/"), ("/", "/"), ("ready?full=1", "/ready?full=1"),
    ("/already/absolute", "/already/absolute"),
])
def test_a_relative_http_path_is_made_absolute_as_kubelet_does(given, requested):
    spec = parse_spec({"readinessProbe": {"httpGet": {"port": 80, "path": given}}})
    assert spec.readiness_probe.handler.path == requested
