"""prepare's check of the vmhealth metadata, cached per domain.

The check itself is vmhealth.metadata.checked_spec_data_from_metadata on what
hook.scan found: the decoding and the rules (vmhealth.spec_rules) that
vmhealth.spec.parse_spec, and so `vmhealth apply` (through domainxml) and the daemon,
are built on, so the hook's verdict and message never differ from theirs. It skips
only the typed model (dataclasses, enum, typing: three times a bare interpreter start
to import) and decodes JSON without importing json (vmhealth.jsontext). Still, the
hook remembers, per domain UUID, the exact metadata it last accepted under this
vmhealth version: a domain started again with the same spec costs a file read and a
comparison. A changed spec, a new vmhealth version or a reboot of the host (the cache
is on /run) means a full check again.
"""

from __future__ import annotations

from vmhealth import __version__
from vmhealth.hook import spool
from vmhealth.hook.scan import DomainFacts, ScanError, scan


def _cache_record(facts: DomainFacts) -> bytes:
    # Everything the verdict depends on: our version, the metadata format version
    # and the spec text, separated by a NUL that neither version string can hold.
    parts = (__version__, facts.health_version or "", facts.spec_text or "")
    return "\0".join(parts).encode("utf-8", "surrogateescape")


def is_known_valid(directory: str, uuid: str, facts: DomainFacts) -> bool:
    return spool.read(directory, uuid, spool.VALIDATED_SUFFIX) == _cache_record(facts)


def remember_valid(directory: str, uuid: str, facts: DomainFacts) -> None:
    spool.write_atomic(directory, uuid, spool.VALIDATED_SUFFIX, _cache_record(facts))


class InvalidSpec(ValueError):
    """The domain's vmhealth metadata is broken; str() names the field and the fix."""


def full_check(data: bytes, facts: DomainFacts | None = None) -> dict | None:
    """Return the spec in `data` as vmhealth.spec_rules.check_spec returns it (plain,
    checked data; None if there is no vmhealth metadata), or raise InvalidSpec.
    `facts`: what scan(data) found, when the caller has it already."""
    from vmhealth.metadata import MetadataError, checked_spec_data_from_metadata
    from vmhealth.spec_rules import SpecError

    try:
        facts = scan(data) if facts is None else facts
    except ScanError as exc:
        raise InvalidSpec(str(exc)) from None
    if facts.health_version is None:
        return None
    try:
        return checked_spec_data_from_metadata(facts.health_version, facts.spec_text)
    except (MetadataError, SpecError) as exc:
        raise InvalidSpec(str(exc)) from None
