"""Reading specs from KubeVirt manifests, bare specs, JSON, stdin and multi-document files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from vmhealth.manifest import ManifestError, load_manifest, load_specs
from vmhealth.spec import (
    Exec,
    GuestAgentPing,
    HttpGet,
    LivenessAction,
    Scheme,
    SpecError,
    TcpSocket,
    WatchdogAction,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "manifests"


def load_text(text: str, name: str | None = None):
    return load_manifest(io.StringIO(text), domain_name=name)


def test_virtual_machine_template_spec():
    loaded = load_manifest(DATA / "vm-web-readiness-exec.yaml")
    spec = loaded.spec
    assert loaded.kind == "VirtualMachine" and loaded.name == "web1"
    assert spec.readiness_probe.handler == Exec(command=("test", "-e", "/run/app.ready"))
    assert (spec.readiness_probe.period_seconds, spec.readiness_probe.timeout_seconds) == (5, 2)
    assert spec.liveness_probe.handler == GuestAgentPing()
    assert spec.liveness_probe.failure_threshold == 6
    assert spec.watchdog.name == "wd0" and spec.watchdog.action is WatchdogAction.RESET
    assert spec.termination_grace_period_seconds == 60
    assert spec.on_liveness_failure is LivenessAction.RESET
    assert spec.user_data == "#cloud-config\npackages: [nginx]\n"


def test_multi_document_picks_the_domain_by_name():
    spec = load_manifest(DATA / "multi-doc.yaml", domain_name="web2").spec
    assert spec.liveness_probe.handler == HttpGet(
        port=8443, path="/healthz", scheme=Scheme.HTTPS,
        http_headers=(("X-Probe", "vmhealth"),))
    assert load_manifest(DATA / "multi-doc.yaml", domain_name="web1").spec.readiness_probe \
        .handler == TcpSocket(port=8080)


def test_multi_document_without_match_is_ambiguous():
    with pytest.raises(ManifestError, match=r"holds 2 specs .*web1.*web2"):
        load_manifest(DATA / "multi-doc.yaml", domain_name="other")


def test_bare_spec_yaml_and_json():
    spec = load_manifest(DATA / "bare-spec.yaml").spec
    assert spec.startup_probe.failure_threshold == 30
    assert spec.liveness_probe.handler.host == "fd00:213::10"
    assert spec.watchdog.action is WatchdogAction.INJECT_NMI
    assert spec.on_liveness_failure is LivenessAction.POWEROFF
    json_spec = load_manifest(DATA / "bare-spec.json").spec
    assert json_spec.readiness_probe.handler == GuestAgentPing()


def test_health_spec_kind():
    spec = load_text("apiVersion: vmhealth.dev/v1\nkind: HealthSpec\nspec:\n"
                     "  readinessProbe: {tcpSocket: {port: 5432}}\n").spec
    assert spec.readiness_probe.handler == TcpSocket(port=5432)


def test_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("readinessProbe: {tcpSocket: {port: 1}}\n"))
    assert load_manifest("-").spec.readiness_probe.handler == TcpSocket(port=1)


@pytest.mark.parametrize(("text", "message"), [
    ("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec:\n  livenessProbe:\n"
     "    grpc: {port: 9000}\n",
     "spec.livenessProbe.grpc: gRPC probes are not supported"),
    ("apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nspec:\n  template:\n    spec:\n"
     "      readinessProbe:\n        httpGet: {port: http}\n",
     "spec.template.spec.readinessProbe.httpGet.port: names port 'http', which is not "
     "declared in spec.template.spec.domain.devices.interfaces[].ports[] (declared: none); "
     "declare it there ({name: http, port: N}) or write the port number"),
    ("readinessProbe:\n  tcpSocket: {port: ssh}\n",
     "readinessProbe.tcpSocket.port: must be a port number 1..65535, got the name 'ssh': "
     "port names come from a KubeVirt manifest's spec.domain.devices.interfaces[].ports[], "
     "which a vmhealth spec does not have; write the port number"),
    ("readinessProbe:\n  tcpSocket: {port: '22'}\n",
     "readinessProbe.tcpSocket.port: must be a port number 1..65535, got the string '22'; "
     "write it without quotes"),
    ("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec:\n  domain:\n"
     "    devices:\n      watchdog: {name: w, i6300esb: {action: explode}}\n",
     "spec.domain.devices.watchdog: must be one of reset, shutdown, poweroff, pause, none, "
     "dump, inject-nmi, got 'explode'"),
    ("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec:\n"
     "  startStrategy: Paused\n  livenessProbe: {guestAgentPing: {}}\n",
     "spec.livenessProbe: is not allowed on a VM that starts paused"),
    ("apiVersion: kubevirt.io/v2\nkind: VirtualMachineInstance\nspec: {}\n",
     "apiVersion: must be kubevirt.io/v1 or kubevirt.io/v1alpha3"),
    ("livenessProbe:\n  exec: {command: []}\n",
     "livenessProbe.exec.command: must be a non-empty list"),
    ("tcpSocket: {port: 22}\n", "looks like a single probe"),
    ("readinessProbe:\n  tcpSocket: {port: true}\n",
     "readinessProbe.tcpSocket.port: must be an integer, not a boolean"),
    ("livenessProbe:\n  guestAgentPing: {}\n  failureThreshold: -1\n",
     "livenessProbe.failureThreshold: must be between 1 and 2147483647 (or 0 for the "
     "default, 3), got -1"),
    ("readinessProbe:\n  guestAgentPing: {}\n  tcpSocket: {port: 1}\n",
     "readinessProbe: must have exactly one handler of httpGet, tcpSocket, exec, "
     "guestAgentPing (found: tcpSocket, guestAgentPing)"),
    ("readinesProbe:\n  guestAgentPing: {}\n", "readinesProbe: unknown field; allowed:"),
])
def test_invalid_specs_name_the_field(text, message):
    with pytest.raises(SpecError) as info:
        load_text(text)
    assert message in str(info.value)


def test_yaml_syntax_error_has_line_and_column():
    with pytest.raises(ManifestError, match=r"<stdin>: YAML syntax error at line 2, column "
                                            r"18: mapping values are not allowed here"):
        load_text("readinessProbe:\n  tcpSocket: port: 1\n")


def test_python_tags_are_refused():
    with pytest.raises(ManifestError, match="YAML"):
        load_text("readinessProbe: !!python/object/apply:os.system ['true']\n")


def test_invalid_base64_user_data():
    text = ("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec:\n  volumes:\n"
            "  - name: c\n    cloudInitNoCloud: {userDataBase64: '***'}\n")
    with pytest.raises(SpecError, match=r"spec.volumes\[0\].cloudInitNoCloud.userDataBase64"):
        load_text(text)


def test_base64_user_data_decoded():
    encoded = base64.b64encode(b"#cloud-config\n{}\n").decode()
    text = ("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec:\n  volumes:\n"
            f"  - name: c\n    cloudInitConfigDrive: {{userDataBase64: {encoded}}}\n")
    assert load_text(text).spec.user_data == "#cloud-config\n{}\n"


def test_only_unrelated_documents():
    with pytest.raises(ManifestError, match="no VirtualMachineInstance, VirtualMachine"):
        load_text("apiVersion: v1\nkind: ConfigMap\n")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(ManifestError, match="no documents"):
        load_text("")
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "absent.yaml")
    with pytest.raises(ManifestError, match="is a directory"):
        load_manifest(tmp_path)


def test_oversized_manifest_refused():
    with pytest.raises(ManifestError, match="larger than"):
        load_text("# " + "x" * (5 * 1024 * 1024))


def test_document_index_in_multi_doc_errors():
    with pytest.raises(SpecError, match=r"\(document 2\)"):
        load_specs(io.StringIO("readinessProbe: {guestAgentPing: {}}\n---\n"
                               "readinessProbe: {tcpSocket: {port: 0}}\n"))
