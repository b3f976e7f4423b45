"""Read health specs from KubeVirt manifests or bare vmhealth spec files.

Accepted documents (YAML or JSON, from a file or stdin, one or many per file):

* ``kind: VirtualMachineInstance`` (kubevirt.io/v1 or v1alpha3): probes under ``spec``,
  the watchdog under ``spec.domain.devices.watchdog``; probe ports given by name
  resolve through ``spec.domain.devices.interfaces[].ports[]`` as in KubeVirt.
* ``kind: VirtualMachine``: the same under ``spec.template.spec``, and the run
  strategy from ``spec.runStrategy`` (or the deprecated ``spec.running``).
* a bare vmhealth spec: a mapping of the fields `vmhealth show` prints
  (livenessProbe, readinessProbe, startupProbe, watchdog, ...), optionally wrapped as
  ``kind: HealthSpec`` with ``apiVersion: vmhealth.dev/v1`` and the fields under ``spec``.

Fields outside health (disks, volumes, resources...) are ignored; a probe field
vmhealth cannot honour (grpc) is an error. The cloud-init user data a KubeVirt
manifest carries is kept in the spec for `vmhealth cloudinit`. What is accepted but
worth a word (a timeout above the period, the deprecated `running`) comes back as
LoadedSpec.warnings, which `vmhealth apply` prints.
"""

from __future__ import annotations

import base64
import binascii
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from vmhealth.spec import (
    HANDLER_FIELDS,
    SPEC_FIELDS,
    HealthSpec,
    ProbeKind,
    RunStrategy,
    SpecError,
    SpecWarning,
    parse_spec,
)
from vmhealth.spec_rules import PROBE_KINDS, check_run_strategy

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few KiB; refuse anything absurd
KUBEVIRT_GROUP = "kubevirt.io"
KUBEVIRT_VERSIONS = ("v1", "v1alpha3")
VMHEALTH_API_VERSION = "vmhealth.dev/v1"
WATCHDOG_MODELS_IN_KUBEVIRT = ("i6300esb", "diag288")
ON_LIVENESS_FAILURE_ANNOTATION = "vmhealth.dev/on-liveness-failure"
# KubeVirt's PauseGuestAgentProbesAnnotation (staging/src/kubevirt.io/api/core/v1/
# types.go): on the VMI, a value strconv.ParseBool reads as true makes virt-launcher
# answer guestAgentPing probes with success without asking the agent
# (pkg/virt-launcher/virtwrap/manager.go, GuestPing); any other value, or none, resumes.
PAUSE_PING_ANNOTATION = "kubevirt.io/pause-guest-agent-probes"
# Go's strconv.ParseBool; whatever else it refuses, and KubeVirt then reads as false.
PARSE_BOOL = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
              **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}
# spec.running of a VirtualMachine, deprecated for spec.runStrategy: what it means
# (KubeVirt's VirtualMachine.RunStrategy(), types.go).
RUN_STRATEGY_OF_RUNNING = {True: RunStrategy.ALWAYS, False: RunStrategy.HALTED}


class ManifestError(ValueError):
    """A manifest that cannot be read: syntax errors, wrong kinds, ambiguity."""


@dataclass(frozen=True)
class LoadedSpec:
    spec: HealthSpec
    name: str | None  # metadata.name of the KubeVirt object, if any
    kind: str  # VirtualMachineInstance, VirtualMachine or HealthSpec
    document_index: int  # 1-based position in a multi-document file
    # Accepted, but to be told to the operator (`vmhealth apply` prints them).
    warnings: tuple[SpecWarning, ...] = ()


def _read_text(source: str | Path | TextIO) -> tuple[str, str]:
    """(text, label for messages) from a path, '-' (stdin) or an open stream."""
    if isinstance(source, (str, Path)) and str(source) == "-":
        source = sys.stdin
    if hasattr(source, "read"):
        text = source.read(MAX_MANIFEST_BYTES + 1)
        label = "<stdin>"
    else:
        path = Path(source)
        try:
            with path.open("r", encoding="utf-8") as handle:
                text = handle.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ManifestError(f"{path}: is a directory, not a manifest file") from None
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
        label = str(path)
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{label}: larger than {MAX_MANIFEST_BYTES} bytes; "
                            "a manifest is a few KiB")
    return text, label


def _parse_documents(text: str, label: str) -> list[Any]:
    try:
        # safe_load_all builds only plain types: no Python objects, no tags that run code.
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = exc.problem or exc.context or "syntax error"
        raise ManifestError(f"{label}: YAML syntax error at {where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{label}: YAML error: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{label}: nested too deeply") from None


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(path, "must be a mapping")
    return value


def _kubevirt_watchdog(data: Any, path: str) -> dict[str, Any]:
    """KubeVirt's {name, i6300esb: {action}} form -> vmhealth's {name, model, action}."""
    data = _mapping(data, path)
    models = [key for key in data if key != "name"]
    if len(models) != 1 or models[0] not in WATCHDOG_MODELS_IN_KUBEVIRT:
        raise SpecError(path, "must have a name and exactly one of "
                              f"{', '.join(WATCHDOG_MODELS_IN_KUBEVIRT)} (e.g. "
                              "{name: mywatchdog, i6300esb: {action: poweroff}})")
    model = models[0]
    body = _mapping(data[model], f"{path}.{model}")
    unknown = [key for key in body if key != "action"]
    if unknown:
        raise SpecError(f"{path}.{model}.{unknown[0]}", "unknown field; allowed: action")
    out: dict[str, Any] = {"model": model}
    if "name" in data:
        out["name"] = data["name"]
    if body.get("action") is not None:
        out["action"] = body["action"]
    return out


def _user_data(vmi_spec: dict[str, Any], path: str) -> str | None:
    volumes = vmi_spec.get("volumes") or []
    if not isinstance(volumes, list):
        return None
    for index, volume in enumerate(volumes):
        if not isinstance(volume, dict):
            continue
        for source in ("cloudInitNoCloud", "cloudInitConfigDrive"):
            cloud_init = volume.get(source)
            if not isinstance(cloud_init, dict):
                continue
            if isinstance(cloud_init.get("userData"), str):
                return cloud_init["userData"]
            encoded = cloud_init.get("userDataBase64")
            if isinstance(encoded, str):
                field = f"{path}.volumes[{index}].{source}.userDataBase64"
                try:
                    return base64.b64decode(encoded, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise SpecError(field, "must be base64 of UTF-8 text") from None
    return None


def _named_ports(devices: dict[str, Any], path: str) -> dict[str, tuple[Any, str]]:
    """{name: (port, where)} from the VMI's interfaces' ports, the names a probe port
    may use. The first declaration of a name wins, as kubelet's lookup over the
    container ports KubeVirt renders from them (pkg/virt-controller/services/
    rendercontainer.go, containerPortsFromVMI). Malformed entries name nothing."""
    found: dict[str, tuple[Any, str]] = {}
    interfaces = devices.get("interfaces")
    for i, interface in enumerate(interfaces if isinstance(interfaces, list) else []):
        ports = interface.get("ports") if isinstance(interface, dict) else None
        for j, port in enumerate(ports if isinstance(ports, list) else []):
            name = port.get("name") if isinstance(port, dict) else None
            if isinstance(name, str) and name:
                found.setdefault(name, (port.get("port"), f"{path}.domain.devices."
                                                          f"interfaces[{i}].ports[{j}].port"))
    return found


def _annotation_flag(annotations: dict[str, Any], name: str, path: str,
                     warnings: list[SpecWarning]) -> bool:
    """An annotation read as KubeVirt reads it (strconv.ParseBool; anything else is
    false), with a warning for a value that is neither."""
    value = annotations.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value in PARSE_BOOL:
        return PARSE_BOOL[value]
    warnings.append(SpecWarning(f"{path}.annotations.{name}",
                                f"{value!r} is not true or false; taken as false, as "
                                "KubeVirt does"))
    return False


def _from_vmi_spec(vmi_spec: Any, path: str, annotations: dict[str, Any],
                   extra: dict[str, Any], warnings: list[SpecWarning]) -> HealthSpec:
    """The health-related part of a VirtualMachineInstanceSpec, as a HealthSpec.

    `extra`: spec fields the surrounding object decides (a VM's runStrategy)."""
    vmi_spec = _mapping(vmi_spec, path)
    data: dict[str, Any] = dict(extra)
    for kind in ProbeKind:
        if vmi_spec.get(kind.value) is not None:
            data[kind.value] = vmi_spec[kind.value]
    devices = _mapping(_mapping(vmi_spec.get("domain"), f"{path}.domain").get("devices"),
                       f"{path}.domain.devices")
    if devices.get("watchdog") is not None:
        data["watchdog"] = _kubevirt_watchdog(devices["watchdog"],
                                              f"{path}.domain.devices.watchdog")
    if vmi_spec.get("terminationGracePeriodSeconds") is not None:
        data["terminationGracePeriodSeconds"] = vmi_spec["terminationGracePeriodSeconds"]
    action = annotations.get(ON_LIVENESS_FAILURE_ANNOTATION)
    if action is not None:
        data["onLivenessFailure"] = action
    user_data = _user_data(vmi_spec, path)
    if user_data is not None:
        data["userData"] = user_data
    try:
        spec = parse_spec(data, path, named_ports=_named_ports(devices, path),
                          warnings=warnings)
    except SpecError as exc:
        # parse_spec names the watchdog in vmhealth's form; point at KubeVirt's field.
        if exc.path.startswith(f"{path}.watchdog"):
            raise SpecError(f"{path}.domain.devices.watchdog", exc.message) from None
        raise
    if vmi_spec.get("startStrategy") == "Paused" and spec.liveness_probe is not None:
        raise SpecError(f"{path}.livenessProbe",
                        "is not allowed on a VM that starts paused (startStrategy: Paused), "
                        "as in KubeVirt; remove one of them")
    return spec


def _vm_run_strategy(vm_spec: dict[str, Any], warnings: list[SpecWarning]) -> dict[str, Any]:
    """{"runStrategy": ...} from a VirtualMachine's spec.runStrategy or spec.running,
    checked as KubeVirt's VM admission checks them (pkg/virt-api/webhooks/
    validating-webhook/admitters/vms-admitter.go, validateRunStrategy); {} with neither
    (KubeVirt refuses that; vmhealth keeps its default)."""
    running, strategy = vm_spec.get("running"), vm_spec.get("runStrategy")
    if running is not None and strategy is not None:
        raise SpecError("spec.running", "and spec.runStrategy are mutually exclusive, as in "
                                        "KubeVirt; keep runStrategy (running is deprecated)")
    if strategy is not None:
        return {"runStrategy": check_run_strategy(strategy, "spec.runStrategy")}
    if running is None:
        return {}
    if not isinstance(running, bool):
        raise SpecError("spec.running", f"must be true or false, got {running!r}")
    meant = RUN_STRATEGY_OF_RUNNING[running]
    warnings.append(SpecWarning("spec.running", f"is deprecated in KubeVirt; it means "
                                                f"runStrategy: {meant.value}, write that"))
    return {"runStrategy": meant.value}


def _api_version_ok(api_version: Any) -> bool:
    if not isinstance(api_version, str) or "/" not in api_version:
        return False
    group, version = api_version.split("/", 1)
    return group == KUBEVIRT_GROUP and version in KUBEVIRT_VERSIONS


def spec_from_document(doc: Any, index: int = 1) -> LoadedSpec | None:
    """The spec a document declares; None for documents that are not about VMs."""
    if not isinstance(doc, dict):
        raise SpecError("(document)", "must be a mapping (a KubeVirt object or a vmhealth spec)")
    kind = doc.get("kind")
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = metadata.get("name") if isinstance(metadata.get("name"), str) else None
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    if kind in ("VirtualMachineInstance", "VirtualMachine"):
        if not _api_version_ok(doc.get("apiVersion")):
            raise SpecError("apiVersion", f"must be {KUBEVIRT_GROUP}/v1 or "
                                          f"{KUBEVIRT_GROUP}/v1alpha3 for {kind}, got "
                                          f"{doc.get('apiVersion')!r}")
        warnings: list[SpecWarning] = []
        if kind == "VirtualMachineInstance":
            paused = _annotation_flag(annotations, PAUSE_PING_ANNOTATION, "metadata",
                                      warnings)
            spec = _from_vmi_spec(doc.get("spec"), "spec", annotations,
                                  {"guestAgentPingPaused": paused}, warnings)
        else:
            spec = _from_vm(doc, annotations, warnings)
        return LoadedSpec(spec=spec, name=name, kind=kind, document_index=index,
                          warnings=tuple(warnings))
    if kind == "HealthSpec":
        if doc.get("apiVersion") != VMHEALTH_API_VERSION:
            raise SpecError("apiVersion", f"must be {VMHEALTH_API_VERSION} for HealthSpec")
        warnings = []
        spec = parse_spec(doc.get("spec") or {}, "spec", warnings=warnings)
        return LoadedSpec(spec=spec, name=name, kind="HealthSpec", document_index=index,
                          warnings=tuple(warnings))
    if kind is None and "apiVersion" not in doc:
        if not any(key in SPEC_FIELDS for key in doc) and any(key in HANDLER_FIELDS
                                                               for key in doc):
            raise SpecError("(document)", "looks like a single probe; put it under "
                                          f"{', '.join(PROBE_KINDS[:-1])} or {PROBE_KINDS[-1]}")
        return _parse_bare(doc, index)
    return None  # Services, ConfigMaps, ... alongside the VM in the same file


def _from_vm(doc: dict[str, Any], annotations: dict[str, Any],
             warnings: list[SpecWarning]) -> HealthSpec:
    """A VirtualMachine: the VMI template's spec, and the VM's run strategy. The
    pause annotation acts on the VMI, so it is read from the template's metadata, as
    KubeVirt passes those annotations on to the VMI it creates."""
    vm_spec = _mapping(doc.get("spec"), "spec")
    template = _mapping(vm_spec.get("template"), "spec.template")
    template_metadata = _mapping(template.get("metadata"), "spec.template.metadata")
    template_annotations = _mapping(template_metadata.get("annotations"),
                                    "spec.template.metadata.annotations")
    paused = _annotation_flag(template_annotations, PAUSE_PING_ANNOTATION,
                              "spec.template.metadata", warnings)
    if PAUSE_PING_ANNOTATION in annotations and PAUSE_PING_ANNOTATION not in \
            template_annotations:
        warnings.append(SpecWarning(f"metadata.annotations.{PAUSE_PING_ANNOTATION}",
                                    "acts on the VirtualMachineInstance, so it has no "
                                    "effect on the VirtualMachine (in KubeVirt either); "
                                    "put it under spec.template.metadata.annotations"))
    extra = {**_vm_run_strategy(vm_spec, warnings), "guestAgentPingPaused": paused}
    return _from_vmi_spec(template.get("spec"), "spec.template.spec", annotations, extra,
                          warnings)


def _parse_bare(doc: dict[str, Any], index: int) -> LoadedSpec:
    # Field paths are relative to the document itself: no "spec." in front.
    def relative(path: str) -> str:
        return path[len("spec."):] if path.startswith("spec.") else path

    warnings: list[SpecWarning] = []
    try:
        spec = parse_spec(doc, "spec", warnings=warnings)
    except SpecError as exc:
        raise SpecError(relative(exc.path), exc.message) from None
    return LoadedSpec(spec=spec, name=None, kind="HealthSpec", document_index=index,
                      warnings=tuple(SpecWarning(relative(w.path), w.message)
                                     for w in warnings))


def load_specs(source: str | Path | TextIO) -> list[LoadedSpec]:
    """Every spec in a file; raises ManifestError or SpecError (prefixed with the document)."""
    text, label = _read_text(source)
    documents = _parse_documents(text, label)
    if not documents:
        raise ManifestError(f"{label}: no documents found")
    loaded = []
    for index, doc in enumerate(documents, start=1):
        try:
            found = spec_from_document(doc, index)
        except SpecError as exc:
            prefix = f"{label}" if len(documents) == 1 else f"{label} (document {index})"
            raise SpecError(exc.path, f"{exc.message} [{prefix}]") from None
        if found is not None:
            loaded.append(found)
    if not loaded:
        raise ManifestError(f"{label}: no VirtualMachineInstance, VirtualMachine or vmhealth "
                            "spec found")
    return loaded


def load_manifest(source: str | Path | TextIO, domain_name: str | None = None) -> LoadedSpec:
    """The one spec meant for `domain_name` in a file of one or more documents.

    With several candidates, the one whose metadata.name equals the domain's name wins;
    otherwise the choice is ambiguous and refused rather than guessed.
    """
    loaded = load_specs(source)
    if len(loaded) == 1:
        return loaded[0]
    if domain_name is not None:
        matching = [item for item in loaded if item.name == domain_name]
        if len(matching) == 1:
            return matching[0]
    names = ", ".join(f"{item.kind} {item.name or '(unnamed)'} (document "
                      f"{item.document_index})" for item in loaded)
    raise ManifestError(f"the file holds {len(loaded)} specs ({names}); keep one per file, or "
                        "name the KubeVirt object after the domain")
