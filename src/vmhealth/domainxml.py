"""Put a health spec into libvirt domain XML, read it back, and take it out again.

The spec lives in one element in our own namespace under `<metadata>`::

    <metadata>
      <vmhealth:health xmlns:vmhealth="https://vmhealth.dev/xmlns/health/1" version="1">
        <vmhealth:spec>{"livenessProbe": {...}, ...}</vmhealth:spec>
        <vmhealth:undo>
          <vmhealth:added model="i6300esb"/>
          <vmhealth:action model="ib700" original="reset"/>
        </vmhealth:undo>
      </vmhealth:health>
    </metadata>

Every element is in our namespace: that is also the shape libvirt gives the live
metadata after virDomainSetMetadata (it puts the whole subtree in the namespace), so
the persistent definition and the live metadata read the same way. Readers also
accept children in no namespace, for hand-written definitions.

The spec is JSON inside the element: one exact, lossless encoding that the hook can
decode with the standard library alone. `undo` records every change vmhealth made to
devices so that `remove` gives back the original definition, and so that applying a
new spec first restores the old state (applying twice is a no-op).

Everything else in the document is edited in place and never rebuilt, so XML that
vmhealth does not model survives untouched.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from lxml import etree

from vmhealth.metadata import (
    FORMAT_VERSION,
    MAX_SPEC_CHARS,
    NAMESPACE,
    PREFIX,
    MetadataError,
    spec_data_from_metadata,
    spec_from_metadata,
)
from vmhealth.spec import HealthSpec, Watchdog, WatchdogModel, spec_to_dict
from vmhealth.xmlsafe import XmlError, parse_xml, to_string

__all__ = ["FORMAT_VERSION", "NAMESPACE", "PREFIX", "Edit", "apply_spec", "remove_spec",
           "read_spec", "read_spec_data_from_root", "is_applied", "health_element",
           "normalise", "parse_domain"]


def _q(tag: str) -> str:
    return f"{{{NAMESPACE}}}{tag}"


def _child(parent: etree._Element, tag: str) -> etree._Element | None:
    """Our child element `tag`, in our namespace (as vmhealth and libvirt's
    setMetadata write it) or in none (as a hand-written definition may have it)."""
    found = parent.find(_q(tag))
    return found if found is not None else parent.find(tag)


@dataclass
class Edit:
    """The result of an edit: the new XML and what changed, in words for the operator."""

    xml: str
    changes: list[str] = field(default_factory=list)
    devices_changed: bool = False


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def find_health(root: etree._Element) -> etree._Element | None:
    metadata = root.find("metadata")
    if metadata is None:
        return None
    return metadata.find(_q("health"))


def read_spec_from_root(root: etree._Element) -> HealthSpec | None:
    health = find_health(root)
    if health is None:
        return None
    return _spec_of(health)


def _decode(health: etree._Element, decoder):
    """Run a vmhealth.metadata decoder on our element's version and <spec> text."""
    spec_el = _child(health, "spec")
    try:
        return decoder(health.get("version"), spec_el.text if spec_el is not None else None)
    except MetadataError as exc:
        raise XmlError(str(exc)) from None


def _spec_of(health: etree._Element) -> HealthSpec:
    return _decode(health, spec_from_metadata)


def read_spec_data_from_root(root: etree._Element) -> dict | None:
    """The stored spec's serialised form, not validated (None when there is none): for
    callers that merge defaults before parsing. Raises XmlError on a broken element."""
    health = find_health(root)
    return None if health is None else _decode(health, spec_data_from_metadata)


def health_element(xml: str | bytes) -> str:
    """Our <health> element without namespace, as virDomainSetMetadata wants it (libvirt
    puts the element and all its children in the namespace itself)."""
    health = find_health(parse_xml(xml))
    if health is None:
        raise XmlError("no vmhealth metadata in the document")
    plain = copy.deepcopy(health)
    plain.tail = None
    for element in plain.iter():
        element.tag = etree.QName(element).localname
    etree.cleanup_namespaces(plain)
    return to_string(plain)


def normalise(xml: str | bytes) -> str:
    """The document as vmhealth serialises it, for diffs that show only real changes."""
    return to_string(parse_xml(xml))


def parse_domain(xml: str | bytes) -> etree._Element:
    """Parse domain XML safely, refusing documents that are not a <domain>."""
    root = parse_xml(xml)
    if root.tag != "domain":
        raise XmlError(f"expected a libvirt <domain> document, got <{root.tag}>")
    return root


def read_spec(xml: str | bytes) -> HealthSpec | None:
    """The spec stored in a domain's XML, None when it has none; raises on a broken one."""
    return read_spec_from_root(parse_domain(xml))


# ---------------------------------------------------------------------------
# Writing helpers that keep the document's indentation tidy
# ---------------------------------------------------------------------------

def _indent_of(parent: etree._Element) -> tuple[str, str]:
    """(whitespace before a new child of parent, whitespace before parent's end tag).

    Follows the document's own indentation where parent already has children, else
    libvirt's two spaces per level.
    """
    depth = sum(1 for _ in parent.iterancestors())
    child = "\n" + "  " * (depth + 1)
    closing = "\n" + "  " * depth
    if len(parent):
        if (parent.text or "").strip() == "" and parent.text:
            child = parent.text
        if (parent[-1].tail or "").strip() == "" and parent[-1].tail:
            closing = parent[-1].tail
    return child, closing


def _append(parent: etree._Element, child: etree._Element) -> None:
    _extend(parent, [child])


def _extend(parent: etree._Element, children: list[etree._Element]) -> None:
    """Append `children` to parent, indented alike. One call for many children: lxml
    counts a parent's children one by one, so appending them singly is quadratic."""
    if not children:
        return
    child_indent, closing = _indent_of(parent)
    if len(parent):
        parent[-1].tail = child_indent
    else:
        parent.text = child_indent
    for child in children:
        child.tail = child_indent
    children[-1].tail = closing
    parent.extend(children)


def _remove(element: etree._Element) -> None:
    """Remove element, keeping the whitespace of the siblings around it intact."""
    parent = element.getparent()
    previous = element.getprevious()
    if previous is not None:
        previous.tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)
    if len(parent) == 0 and (parent.text or "").strip() == "":
        parent.text = None


# ---------------------------------------------------------------------------
# Watchdog rules (libvirt: all watchdogs share one action; model constraints)
# ---------------------------------------------------------------------------

def _machine_and_arch(root: etree._Element) -> tuple[str, str]:
    os_type = root.find("os/type")
    if os_type is None:
        return "", ""
    return os_type.get("machine", ""), os_type.get("arch", "")


def _check_model_fits(root: etree._Element, watchdog: Watchdog) -> None:
    machine, arch = _machine_and_arch(root)
    if watchdog.model is WatchdogModel.ITCO and machine and "q35" not in machine:
        raise XmlError(f"watchdog model itco needs a q35 machine; this domain's machine is "
                       f"{machine!r} (use i6300esb)")
    if watchdog.model is WatchdogModel.DIAG288 and arch and arch != "s390x":
        raise XmlError(f"watchdog model diag288 exists only on s390x; this domain is {arch} "
                       "(use i6300esb)")
    if watchdog.model is WatchdogModel.IB700 and arch and arch not in ("x86_64", "i686"):
        raise XmlError(f"watchdog model ib700 is an ISA device for x86; this domain is {arch}")


def _apply_watchdog(root: etree._Element, watchdog: Watchdog, edit: Edit, *,
                    allow_multiple: bool) -> list[etree._Element]:
    """Put the spec's watchdog in place; return the undo records for what changed."""
    _check_model_fits(root, watchdog)
    undo: list[etree._Element] = []
    devices = root.find("devices")
    if devices is None:
        devices = etree.Element("devices")
        _append(root, devices)
        undo.append(etree.Element(_q("created-devices")))
    action = watchdog.action.value
    existing = devices.findall("watchdog")
    others = [dev.get("model", "?") for dev in existing if dev.get("model") != watchdog.model.value]
    if others and not allow_multiple and len(others) == len(existing):
        raise XmlError(f"the domain already has a {others[0]} watchdog and this libvirt "
                       "allows only one (several are allowed from libvirt 9.1); set "
                       f"watchdog.model: {others[0]} in the spec, or remove that device "
                       "with `virsh edit`")
    if not any(dev.get("model") == watchdog.model.value for dev in existing):
        device = etree.Element("watchdog", model=watchdog.model.value, action=action)
        _append(devices, device)
        undo.append(etree.Element(_q("added"), model=watchdog.model.value))
        edit.changes.append(f"added a {watchdog.model.value} watchdog with action {action}")
        edit.devices_changed = True
    for device in existing:
        original = device.get("action")  # None: no attribute, which libvirt reads as reset
        if (original or "reset") == action:
            continue
        model = device.get("model", "")
        device.set("action", action)
        record = etree.Element(_q("action"), model=model)
        if original is not None:  # absent: undo removes the attribute again
            record.set("original", original)
        undo.append(record)
        why = "" if model == watchdog.model.value else \
            " (libvirt requires every watchdog of a domain to share one action)"
        edit.changes.append(f"changed the {model} watchdog's action from "
                            f"{original or 'reset'} to {action}{why}")
        edit.devices_changed = True
    return undo


def _undo_changes(root: etree._Element, health: etree._Element, edit: Edit) -> None:
    """Reverse what an earlier apply recorded in <vmhealth:undo>."""
    undo = _child(health, "undo")
    if undo is None:
        return
    records = [record for record in undo if isinstance(record.tag, str)]
    originals = _original_actions(records)
    restored: set[str | None] = set()
    devices = root.find("devices")
    # Last change first, as undo goes: <devices> is dropped only after what we added
    # to it is gone.
    for record in reversed(records):
        if devices is None:
            break
        model = record.get("model")  # apply writes one on every record, "" included
        kind = etree.QName(record).localname
        if kind == "added":
            for device in devices.iterfind("watchdog"):
                if device.get("model") == model:
                    _remove(device)
                    edit.changes.append(f"removed the {model} watchdog vmhealth had added")
                    edit.devices_changed = True
                    break
        elif kind == "action" and model not in restored:
            # Once per model, not once per record: a record per changed device, each
            # restoring every device of its model, was quadratic in the watchdogs.
            restored.add(model)
            for device in devices.iterfind("watchdog"):
                if device.get("model", "") == model:
                    _restore_action(device, originals[model])
                    edit.changes.append(f"restored the {model} watchdog's action to "
                                        f"{originals[model] or 'reset'}")
                    edit.devices_changed = True
        elif kind == "created-devices" and len(devices) == 0:
            _remove(devices)
            devices = None


def _original_actions(records: list[etree._Element]) -> dict[str | None, str | None]:
    """Per model, the action its watchdogs had before vmhealth (None: no attribute).

    apply writes one <action> record per changed device; libvirt gives all watchdogs
    of a domain one action, so the records of a model agree. Should they not (a
    hand-edited record), the first one wins, as it did when each record was undone
    in turn, last to first."""
    originals: dict[str | None, str | None] = {}
    for record in records:
        if etree.QName(record).localname == "action":
            originals.setdefault(record.get("model"), record.get("original"))
    return originals


def _restore_action(device: etree._Element, original: str | None) -> None:
    """Give `device` back the action attribute it had: `original`, or none at all."""
    if original is None:
        device.attrib.pop("action", None)
    else:
        device.set("action", original)


def _strip(root: etree._Element, edit: Edit) -> bool:
    """Undo and remove our metadata; True when there was any."""
    health = find_health(root)
    if health is None:
        return False
    _undo_changes(root, health, edit)
    metadata = health.getparent()
    undo = _child(health, "undo")
    created_metadata = undo is not None and _child(undo, "created-metadata") is not None
    _remove(health)
    if created_metadata and len(metadata) == 0:
        _remove(metadata)
    return True


# ---------------------------------------------------------------------------
# Public edits
# ---------------------------------------------------------------------------

def _create_metadata(root: etree._Element) -> etree._Element:
    """Add an empty <metadata> where libvirt itself writes it: after name/uuid/title."""
    metadata = etree.Element("metadata")
    anchor = next((found for found in map(root.find, ("description", "title", "uuid", "name"))
                   if found is not None), None)
    if anchor is None:
        _append(root, metadata)
        return metadata
    child_indent, _closing = _indent_of(root)
    original_tail = anchor.tail
    anchor.addnext(metadata)
    anchor.tail = child_indent
    # What followed the anchor (indentation, or text in a hand-written document) now
    # follows the new element, so that remove gives it back exactly.
    metadata.tail = original_tail
    return metadata


def is_applied(xml: str | bytes, spec: HealthSpec) -> bool:
    """True when the document already stores `spec` with its watchdog in place.

    libvirt reformats and reorders what it is given, so comparing text after a
    round trip through libvirt says nothing; compare what apply would establish.
    """
    root = parse_domain(xml)
    try:
        if read_spec_from_root(root) != spec:
            return False
    except (XmlError, ValueError):
        return False
    if spec.watchdog is None:
        return True
    watchdogs = root.findall("devices/watchdog")
    return any(dev.get("model") == spec.watchdog.model.value for dev in watchdogs) and all(
        dev.get("action", "reset") == spec.watchdog.action.value for dev in watchdogs)


def _encoded_spec(spec: HealthSpec) -> str:
    """The spec as stored: JSON, within the size the hook and the daemon will read."""
    text = json.dumps(spec_to_dict(spec), sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_SPEC_CHARS:
        raise XmlError(f"the spec is {len(text)} characters as JSON, more than the "
                       f"{MAX_SPEC_CHARS} vmhealth stores in a domain's metadata "
                       "(shorten the exec commands or HTTP headers)")
    return text


def apply_spec(xml: str | bytes, spec: HealthSpec, *, allow_multiple_watchdogs: bool = True
               ) -> Edit:
    """Return the domain XML with `spec` stored and its watchdog in place.

    `allow_multiple_watchdogs`: whether libvirt accepts several watchdog devices
    (libvirt >= 9.1); when it does not, a domain with a watchdog of another model is
    refused rather than silently given a second one.
    """
    root = parse_domain(xml)
    edit = Edit(xml="")
    _strip(root, edit)
    # Changes made while undoing are an implementation detail of re-applying; report
    # only the net effect, which the caller sees by comparing documents.
    edit.changes.clear()
    edit.devices_changed = False
    undo_records: list[etree._Element] = []
    metadata = root.find("metadata")
    if metadata is None:
        metadata = _create_metadata(root)
        undo_records.append(etree.Element(_q("created-metadata")))
    health = etree.Element(_q("health"), nsmap={PREFIX: NAMESPACE}, version=FORMAT_VERSION)
    _append(metadata, health)
    spec_el = etree.Element(_q("spec"))
    spec_el.text = _encoded_spec(spec)
    _append(health, spec_el)
    if spec.watchdog is not None:
        undo_records += _apply_watchdog(root, spec.watchdog, edit,
                                        allow_multiple=allow_multiple_watchdogs)
    if undo_records:
        undo = etree.Element(_q("undo"))
        _append(health, undo)
        _extend(undo, undo_records)
    edit.changes.insert(0, "stored the health spec in <metadata> "
                           f"(namespace {NAMESPACE})")
    edit.xml = to_string(root)
    return edit


def remove_spec(xml: str | bytes) -> Edit | None:
    """Return the domain XML without our metadata and device changes; None if none."""
    root = parse_domain(xml)
    edit = Edit(xml="")
    if not _strip(root, edit):
        return None
    edit.changes.insert(0, "removed the health spec from <metadata>")
    edit.xml = to_string(root)
    return edit
