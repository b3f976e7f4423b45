"""Which domains the daemon monitors, and with which spec.

A running domain is adopted when its definition carries a vmhealth spec with at least
one probe. The running domain's metadata is read first (`vmhealth apply` and `remove`
update it at once, and it is what the domain was started with); the persistent
definition is the fallback, for a spec applied while the live update failed. Host-wide
defaults from the config fill fields a stored spec leaves out.
"""

from __future__ import annotations

import json
from typing import Any

import libvirt
from lxml import etree

from vmhealth.domainxml import find_health, read_spec_from_root
from vmhealth.monitor.config import with_spec_defaults
from vmhealth.spec import HealthSpec, SpecError, parse_spec
from vmhealth.xmlsafe import XmlError, parse_xml


class InvalidSpec(Exception):
    """The domain carries a spec we cannot use; the message says why."""


def spec_from_xml(xml: str, defaults: dict[str, Any] | None = None) -> HealthSpec | None:
    try:
        root = parse_xml(xml)
        spec = read_spec_from_root(root)  # validates the format version and the spec
        if spec is None or not defaults:
            return spec
        data = json.loads(_spec_text(find_health(root)))
        return parse_spec(with_spec_defaults(data, defaults), "metadata.spec")
    except (XmlError, SpecError) as exc:
        raise InvalidSpec(str(exc)) from None


def _spec_text(health: etree._Element) -> str:
    # read_spec_from_root has validated the element; only its JSON text is needed here
    # (matched by local name, whichever namespace the format version gives it).
    for child in health:
        if isinstance(child.tag, str) and etree.QName(child).localname == "spec":
            return child.text or ""
    raise InvalidSpec("vmhealth metadata has no spec element")


def domain_spec(dom: libvirt.virDomain, defaults: dict[str, Any] | None = None
                ) -> HealthSpec | None:
    """Blocking: the spec the running domain should be monitored with, or None."""
    spec = spec_from_xml(dom.XMLDesc(0), defaults)
    if spec is None and dom.isPersistent():
        spec = spec_from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), defaults)
    return spec


def wants_monitoring(spec: HealthSpec | None) -> bool:
    """A spec with only a watchdog needs no probes (its events are recorded anyway)."""
    return spec is not None and bool(spec.probes())
