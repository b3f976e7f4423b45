"""Which domains the daemon monitors, and with which spec.

A running domain is adopted when its definition carries a vmhealth spec with at least
one probe. The running domain's metadata is read first (`vmhealth apply` and `remove`
update it at once, and it is what the domain was started with); the persistent
definition is the fallback, for a spec applied while the live update failed. Host-wide
defaults from the config fill fields a stored spec leaves out.
"""

from __future__ import annotations

from typing import Any

import libvirt

from vmhealth.domainxml import read_spec_data_from_root, read_spec_from_root
from vmhealth.monitor.config import with_spec_defaults
from vmhealth.spec import HealthSpec, SpecError, parse_spec
from vmhealth.xmlsafe import XmlError, parse_xml


class InvalidSpec(Exception):
    """The domain carries a spec we cannot use; the message says why."""


def spec_from_xml(xml: str, defaults: dict[str, Any] | None = None) -> HealthSpec | None:
    try:
        root = parse_xml(xml)
        if not defaults:
            return read_spec_from_root(root)  # validates the format version and the spec
        data = read_spec_data_from_root(root)
        if data is None:
            return None
        return parse_spec(with_spec_defaults(data, defaults), "metadata.spec")
    except (XmlError, SpecError) as exc:
        raise InvalidSpec(str(exc)) from None


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
