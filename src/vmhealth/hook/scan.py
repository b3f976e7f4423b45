"""Read the few facts the hook needs from a domain XML, with the standard library only.

Why not vmhealth.xmlsafe (lxml)? Importing lxml costs about 30 ms, several times the
whole budget of a hook that libvirt waits for on every domain start and stop. This
reader uses expat (a C module that ships with Python and loads in well under a
millisecond) and is as strict as xmlsafe where it matters: any DOCTYPE is refused
before an entity can be declared, the size is bounded, and only the document libvirt
itself writes (a <domain> root without namespace) is accepted. Full validation of the
spec still goes through vmhealth.domainxml (see validate.py); this module only finds
things.
"""

from __future__ import annotations

# pyexpat is what xml.parsers.expat re-exports; importing it directly skips the xml
# and xml.parsers packages (0.2 ms of every hook run).
import pyexpat as expat

# vmhealth.metadata is standard library only (domainxml would pull in lxml).
from vmhealth.metadata import MAX_DOMAIN_XML_BYTES as MAX_XML_BYTES
from vmhealth.metadata import NAMESPACE

NAMESPACE_BYTES = NAMESPACE.encode("ascii")

_SEP = " "  # expat joins namespace URI and local name with this; URIs have no spaces
_HEALTH = f"{NAMESPACE}{_SEP}health"
# <spec> is in our namespace as vmhealth and libvirt's setMetadata write it, or in
# none in a hand-written definition (see vmhealth.domainxml); accept both.
_SPEC = ("spec", f"{NAMESPACE}{_SEP}spec")
_HEX = frozenset("0123456789abcdef")
_UUID_GROUPS = (8, 4, 4, 4, 12)


class ScanError(ValueError):
    """The document is not one the hook accepts (malformed, DOCTYPE, not a domain...)."""


class WatchdogDevice:
    """One <devices><watchdog>: its model, its action and where its start tag begins."""

    __slots__ = ("action", "model", "offset")

    def __init__(self, model: str, action: str | None, offset: int) -> None:
        self.model = model
        self.action = action  # None: attribute absent, which libvirt reads as reset
        self.offset = offset

    @property
    def effective_action(self) -> str:
        return self.action or "reset"


class DomainFacts:
    """What scan() found. `uuid` is the raw text of <uuid>; see canonical_uuid()."""

    __slots__ = ("health_version", "spec_text", "uuid", "watchdogs")

    def __init__(self) -> None:
        self.uuid: str | None = None
        self.health_version: str | None = None  # None: no vmhealth:health element
        self.spec_text: str | None = None
        self.watchdogs: list[WatchdogDevice] = []

    @property
    def has_health(self) -> bool:
        return self.health_version is not None


def is_canonical_uuid(text: str | None) -> bool:
    """True for the lower-case 8-4-4-4-12 form libvirt prints (virUUIDFormat)."""
    if text is None or len(text) != 36:
        return False
    groups = text.split("-")
    return (tuple(len(group) for group in groups) == _UUID_GROUPS
            and all(ch in _HEX for group in groups for ch in group))


def canonical_uuid(facts: DomainFacts) -> str:
    """The domain's UUID, safe to use as a file name, or ScanError."""
    if not is_canonical_uuid(facts.uuid):
        shown = "missing" if facts.uuid is None else repr(facts.uuid[:60])
        raise ScanError(f"the domain's <uuid> is not a canonical UUID ({shown})")
    return facts.uuid


class _Reader:
    """expat callbacks that fill a DomainFacts; depth-aware so nested look-alikes
    (a <uuid> inside some other application's metadata) are ignored."""

    def __init__(self, parser: expat.XMLParserType) -> None:
        self.parser = parser
        self.facts = DomainFacts()
        self.path: list[str] = []
        self.text: list[str] | None = None  # collecting character data when not None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        path = self.path
        path.append(name)
        depth = len(path)
        if depth == 1:
            if name != "domain":
                raise ScanError(f"the root element is <{_local(name)}>, not a libvirt <domain>")
        elif depth == 2 and name == "uuid":
            if self.facts.uuid is not None:
                raise ScanError("the domain has more than one <uuid>")
            self.text = []
        elif depth == 3 and name == _HEALTH and path[1] == "metadata":
            if self.facts.has_health:
                raise ScanError("the domain has more than one vmhealth:health element")
            self.facts.health_version = attrs.get("version", "")
        elif depth == 4 and name in _SPEC and path[2] == _HEALTH and path[1] == "metadata":
            self.text = []
        elif depth == 3 and name == "watchdog" and path[1] == "devices":
            self.facts.watchdogs.append(WatchdogDevice(
                attrs.get("model", ""), attrs.get("action"), self.parser.CurrentByteIndex))

    def end(self, name: str) -> None:
        if self.text is not None:
            text = "".join(self.text)
            if name == "uuid":
                self.facts.uuid = text.strip()
            else:
                self.facts.spec_text = text
            self.text = None
        self.path.pop()

    def characters(self, data: str) -> None:
        if self.text is not None:
            self.text.append(data)


def _local(name: str) -> str:
    return name.rsplit(_SEP, 1)[-1]


def _refuse_doctype(*_args: object) -> None:
    raise ScanError("the document contains a DOCTYPE; libvirt never writes one")


def _check_encoding(_version: str, encoding: str | None, _standalone: int) -> None:
    # The watchdog filter edits bytes in place, which is only sound for UTF-8 (the
    # only encoding libvirt emits).
    if encoding is not None and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise ScanError(f"the document is encoded as {encoding}; only UTF-8 is accepted")


def scan(data: bytes) -> DomainFacts:
    """Find uuid, vmhealth metadata and watchdogs in `data`, or raise ScanError."""
    if len(data) > MAX_XML_BYTES:
        raise ScanError(f"the document is larger than {MAX_XML_BYTES} bytes")
    parser = expat.ParserCreate(namespace_separator=_SEP)
    reader = _Reader(parser)
    parser.buffer_text = True
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.characters
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_doctype
    parser.XmlDeclHandler = _check_encoding
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ScanError(f"the document is not well-formed XML: {exc}") from None
    return reader.facts
