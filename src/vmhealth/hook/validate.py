"""prepare's check of the vmhealth metadata, cached per domain.

The check itself is vmhealth.domainxml.read_spec, the same code `vmhealth apply` and
the daemon use, so the hook's verdict and message never differ from theirs. It needs
lxml and the spec model (about 50 ms to import), so the hook remembers, per domain
UUID, the exact metadata it last accepted under this vmhealth version: a domain
started again with the same spec costs a file read and a comparison. A changed spec,
a new vmhealth version or a reboot of the host (the cache is on /run) means a full
check again.
"""

from __future__ import annotations

import sys

from vmhealth import __version__
from vmhealth.hook import spool
from vmhealth.hook.scan import DomainFacts


def _cache_record(facts: DomainFacts) -> bytes:
    # Everything the verdict depends on: our version, the metadata format version
    # and the spec text, separated by a NUL that neither version string can hold.
    parts = (__version__, facts.health_version or "", facts.spec_text or "")
    return "\0".join(parts).encode("utf-8", "surrogateescape")


def is_known_valid(directory: str, uuid: str, facts: DomainFacts) -> bool:
    return spool.read(directory, uuid, spool.VALIDATED_SUFFIX) == _cache_record(facts)


def remember_valid(directory: str, uuid: str, facts: DomainFacts) -> None:
    spool.write_atomic(directory, uuid, spool.VALIDATED_SUFFIX, _cache_record(facts))


def ensure_site_packages() -> None:
    """Make site-packages importable in a hook started with `python3 -IS`.

    The launcher skips site at start-up because most hook runs need nothing beyond
    the standard library; lxml is the exception, needed only here and in the watchdog
    filter, so site is set up on first need.
    """
    if "site" not in sys.modules:
        import site

        site.main()


class InvalidSpec(ValueError):
    """The domain's vmhealth metadata is broken; str() names the field and the fix."""


def full_check(data: bytes):
    """Return the HealthSpec in `data` (None if it has none), or raise InvalidSpec."""
    ensure_site_packages()
    from vmhealth.domainxml import read_spec
    from vmhealth.spec import SpecError
    from vmhealth.xmlsafe import XmlError

    try:
        return read_spec(data)
    except (SpecError, XmlError) as exc:
        raise InvalidSpec(str(exc)) from None
