"""Which domains the daemon monitors, and with which spec.

A running domain is adopted when its definition carries a vmhealth spec with at least
one probe. The running domain's metadata is read first (`vmhealth apply` and `remove`
update it at once, and it is what the domain was started with); the persistent
definition is the fallback, for a spec applied while the live update failed. Host-wide
defaults from the config fill fields a stored spec leaves out.

Whoever may define a domain writes its metadata, so anything can be in it: every way
the stored spec can fail to decode or validate is an InvalidSpec (the domain is
reported and left alone), never an exception that reaches the daemon's loop.
"""

from __future__ import annotations

from typing import Any

import libvirt

from vmhealth.domainxml import read_spec_data_from_root, read_spec_from_root
from vmhealth.excerpt import excerpt
from vmhealth.monitor.config import with_spec_defaults
from vmhealth.spec import HealthSpec, SpecError, parse_spec
from vmhealth.xmlsafe import XmlError, parse_xml


class InvalidSpec(Exception):
    """The domain carries a spec we cannot use; the message says why."""


def spec_from_xml(xml: str, defaults: dict[str, Any] | None = None) -> HealthSpec | None:
    """The spec stored in `xml` with `defaults` filled in, None without one; raises
    InvalidSpec for anything else."""
    try:
        return _spec_from_xml(xml, defaults)
    except (XmlError, SpecError) as exc:
        raise InvalidSpec(str(exc)) from None
    except (ValueError, TypeError, RecursionError) as exc:
        # Not a verdict the readers foresaw, but still about this domain's text: the
        # domain is reported, the daemon goes on with the others.
        raise InvalidSpec(f"the stored spec cannot be read ({type(exc).__name__}: "
                          f"{excerpt(exc)})") from None


def _spec_from_xml(xml: str, defaults: dict[str, Any] | None) -> HealthSpec | None:
    root = parse_xml(xml)
    # The stored spec on its own first (format version, JSON bounds, the rules), as
    # the hook checks it: defaults then only fill fields of a spec known to be valid
    # (merged into an invalid one, a string where a number belongs fails with a
    # TypeError instead of the field's message).
    spec = read_spec_from_root(root)
    if spec is None or not defaults:
        return spec
    return parse_spec(with_spec_defaults(read_spec_data_from_root(root), defaults),
                      "metadata.spec")


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
