"""vmhealth's domain metadata format: its namespace and how the spec is encoded.

Standard library only, and cheap to import: the libvirt hook reads the spec on its
hot path without lxml (vmhealth.hook.scan finds the element with expat), while
vmhealth.domainxml edits whole documents with lxml. Both decode the spec here, so
their verdicts and messages are the same.
"""

from __future__ import annotations

NAMESPACE = "https://vmhealth.dev/xmlns/health/1"
PREFIX = "vmhealth"
FORMAT_VERSION = "1"
# libvirt's own limit for a domain XML document (VIR_DOMAIN_XML_MAX, 10 MiB); anything
# larger is not a domain definition.
MAX_DOMAIN_XML_BYTES = 10 * 1024 * 1024
# Where a spec error in the metadata points: metadata.spec.livenessProbe...
SPEC_PATH = "metadata.spec"
# Bounds on the stored spec's JSON, checked before and while decoding it: whoever may
# define a domain writes this text, and the hook and the daemon must give a verdict
# on any of it (json.loads meets 10,000 nested brackets with a RecursionError). A
# valid spec nests VALID_SPEC_DEPTH levels (spec, probe, httpGet, httpHeaders, header)
# and is a few hundred characters; an exec command of many long arguments stays far
# below these bounds too. `vmhealth apply` refuses to store a longer spec.
MAX_SPEC_DEPTH = 32
VALID_SPEC_DEPTH = 5
MAX_SPEC_CHARS = 64 * 1024


class MetadataError(ValueError):
    """The vmhealth element is present but unreadable (version, missing spec, JSON)."""


def spec_data_from_metadata(version: str | None, text: str | None) -> dict:
    """The spec's serialised form (a dict, not yet validated) from our element's
    `version` attribute and <spec> text; raises MetadataError."""
    if version != FORMAT_VERSION:
        raise MetadataError(f"vmhealth metadata has version {version!r}; this vmhealth reads "
                            f"version {FORMAT_VERSION} (upgrade vmhealth or re-apply the spec)")
    if not (text or "").strip():
        raise MetadataError("vmhealth metadata has no <spec> element")
    # json.loads' decoder without importing json (which the hook cannot afford).
    from vmhealth.jsontext import JSONLimitError, loads

    try:
        data = loads(text, max_chars=MAX_SPEC_CHARS, max_depth=MAX_SPEC_DEPTH)
    except JSONLimitError as exc:
        raise MetadataError(f"{SPEC_PATH}: {exc} (a health spec is a few hundred "
                            f"characters and nests at most {VALID_SPEC_DEPTH} levels)") from None
    except ValueError as exc:
        raise MetadataError(f"vmhealth metadata spec is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MetadataError("vmhealth metadata spec is not a JSON object")
    return data


def checked_spec_data_from_metadata(version: str | None, text: str | None) -> dict:
    """The spec as vmhealth.spec_rules.check_spec returns it (plain, checked data):
    what the hook uses, as it cannot afford the typed model's imports.

    Raises MetadataError, or SpecError naming the field under `metadata.spec`.
    """
    from vmhealth.spec_rules import check_spec

    return check_spec(spec_data_from_metadata(version, text), SPEC_PATH)


def spec_from_metadata(version: str | None, text: str | None):
    """The HealthSpec encoded in our element's `version` attribute and <spec> text.

    Raises MetadataError, or vmhealth.spec.SpecError naming the field under
    `metadata.spec`.
    """
    from vmhealth.spec import spec_from_checked

    return spec_from_checked(checked_spec_data_from_metadata(version, text))
