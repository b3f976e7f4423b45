"""Parse XML safely: no entity expansion, no DTD loading, no network, bounded size.

Domain XML reaches us from libvirt, from the hook's stdin and from files operators
pass in; none of it may make us fetch a URL, expand an entity bomb or read a local
file through an external entity. libvirt itself never emits a DOCTYPE, so any
document carrying one is refused outright rather than half-trusted.
"""

from __future__ import annotations

from lxml import etree

from vmhealth.metadata import MAX_DOMAIN_XML_BYTES as MAX_XML_BYTES


class XmlError(ValueError):
    """XML that is malformed, too large, or uses features we refuse (DTDs, entities)."""


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
    )


def parse_xml(data: str | bytes, what: str = "domain XML") -> etree._Element:
    """Parse `data` and return the root element, or raise XmlError naming `what`."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise XmlError(f"{what} is {len(raw)} bytes, above the {MAX_XML_BYTES}-byte limit")
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"{what} is not well-formed XML: {exc}") from None
    if root is None:
        raise XmlError(f"{what} is empty")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XmlError(f"{what} must not contain a DOCTYPE or entity declarations")
    return root


def to_string(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")
