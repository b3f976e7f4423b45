"""Read health specs from KubeVirt manifests or bare vmhealth spec files.

Accepted documents (YAML or JSON, from a file or stdin, one or many per file):

* ``kind: VirtualMachineInstance`` (kubevirt.io/v1 or v1alpha3): probes under ``spec``,
  the watchdog under ``spec.domain.devices.watchdog``.
* ``kind: VirtualMachine``: the same under ``spec.template.spec``.
* a bare vmhealth spec: a mapping of the fields `vmhealth show` prints
  (livenessProbe, readinessProbe, startupProbe, watchdog, ...), optionally wrapped as
  ``kind: HealthSpec`` with ``apiVersion: vmhealth.dev/v1`` and the fields under ``spec``.

Fields outside health (disks, volumes, resources...) are ignored; a probe field
vmhealth cannot honour (grpc) is an error. The cloud-init user data a KubeVirt
manifest carries is kept in the spec for `vmhealth cloudinit`.
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
    SpecError,
    parse_spec,
)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few KiB; refuse anything absurd
KUBEVIRT_GROUP = "kubevirt.io"
KUBEVIRT_VERSIONS = ("v1", "v1alpha3")
VMHEALTH_API_VERSION = "vmhealth.dev/v1"
WATCHDOG_MODELS_IN_KUBEVIRT = ("i6300esb", "diag288")


class ManifestError(ValueError):
    """A manifest that cannot be read: syntax errors, wrong kinds, ambiguity."""


@dataclass(frozen=True)
class LoadedSpec:
    spec: HealthSpec
    name: str | None  # metadata.name of the KubeVirt object, if any
    kind: str  # VirtualMachineInstance, VirtualMachine or HealthSpec
    document_index: int  # 1-based position in a multi-document file


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


def _from_vmi_spec(vmi_spec: Any, path: str, annotations: dict[str, Any]) -> HealthSpec:
    """The health-related part of a VirtualMachineInstanceSpec, as a HealthSpec."""
    vmi_spec = _mapping(vmi_spec, path)
    data: dict[str, Any] = {}
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
    action = annotations.get("vmhealth.dev/on-liveness-failure")
    if action is not None:
        data["onLivenessFailure"] = action
    user_data = _user_data(vmi_spec, path)
    if user_data is not None:
        data["userData"] = user_data
    try:
        spec = parse_spec(data, path)
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
        if kind == "VirtualMachineInstance":
            spec = _from_vmi_spec(doc.get("spec"), "spec", annotations)
        else:
            template = _mapping(_mapping(doc.get("spec"), "spec").get("template"),
                                "spec.template")
            spec = _from_vmi_spec(template.get("spec"), "spec.template.spec", annotations)
        return LoadedSpec(spec=spec, name=name, kind=kind, document_index=index)
    if kind == "HealthSpec":
        if doc.get("apiVersion") != VMHEALTH_API_VERSION:
            raise SpecError("apiVersion", f"must be {VMHEALTH_API_VERSION} for HealthSpec")
        return LoadedSpec(spec=parse_spec(doc.get("spec") or {}, "spec"), name=name,
                          kind="HealthSpec", document_index=index)
    if kind is None and "apiVersion" not in doc:
        if not any(key in SPEC_FIELDS for key in doc) and any(key in HANDLER_FIELDS
                                                               for key in doc):
            raise SpecError("(document)", "looks like a single probe; put it under "
                                          "livenessProbe, readinessProbe or startupProbe")
        # A bare spec: field paths are relative to the document itself.
        return LoadedSpec(spec=_parse_bare(doc), name=None, kind="HealthSpec",
                          document_index=index)
    return None  # Services, ConfigMaps, ... alongside the VM in the same file


def _parse_bare(doc: dict[str, Any]) -> HealthSpec:
    try:
        return parse_spec(doc, "spec")
    except SpecError as exc:
        path = exc.path[len("spec."):] if exc.path.startswith("spec.") else exc.path
        raise SpecError(path, exc.message) from None


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
