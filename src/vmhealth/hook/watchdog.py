"""The migrate/restore filter: make every watchdog's action the one the spec asks for.

A watchdog's action is host-side policy that the guest cannot see, so libvirt accepts
a changed action on an incoming migration or a restore. Devices are another matter:
adding or removing one would change the machine under a running guest, so this filter
never does; a watchdog the spec wants but the domain lacks is reported instead and
arrives with the next cold boot (the persistent definition already has it).

The edit is made on the original bytes, touching only the action attribute, so the
XML libvirt gets back is the XML it sent in every other byte. The work is linear in
the document: each watchdog's own tag is read once, and the result is put together
once (splice), so a definition with 50,000 watchdogs is aligned well within the
hook's time limit.
"""

from __future__ import annotations

from vmhealth.hook.scan import DomainFacts, ScanError

_SPACE = b" \t\r\n"


class Alignment:
    """What align() did. A plain class: dataclasses costs the hook more to import than
    a bare interpreter takes to start."""

    __slots__ = ("changes", "missing_model", "xml")

    def __init__(self, xml: bytes | None, changes: tuple[str, ...],
                 missing_model: str | None) -> None:
        self.xml = xml  # the changed document, None when nothing needed changing
        self.changes = changes  # what changed, one line each, for stderr
        self.missing_model = missing_model  # the spec's model, when the domain lacks it


def align(data: bytes, facts: DomainFacts, model: str, action: str) -> Alignment:
    """Set every watchdog's action to `action` (libvirt: all watchdogs share one)."""
    spans = []
    changes = []
    for device in sorted(facts.watchdogs, key=_offset):
        if device.effective_action == action:
            continue
        spans.append(_action_span(data, device.offset, action))
        changes.append(f"watchdog {device.model or '(no model)'}: action "
                       f"{device.effective_action} -> {action}")
    present = any(device.model == model for device in facts.watchdogs)
    return Alignment(xml=splice(data, spans) if spans else None, changes=tuple(changes),
                     missing_model=None if present else model)


def _offset(device) -> int:
    return device.offset


def splice(data: bytes, spans: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each (start, stop, replacement) span replaced; spans in document
    order, none overlapping. Every span's offsets are those of the original `data`,
    and the result is put together once: linear in the document, however many
    watchdogs change (editing a copy per watchdog was quadratic, and 50,000 watchdogs
    took longer than the hook's time limit)."""
    pieces = []
    copied = 0  # data[:copied] is in pieces
    for start, stop, replacement in spans:
        if start < copied:
            raise ScanError(f"overlapping edits at byte {start}")
        pieces += (data[copied:start], replacement)
        copied = stop
    pieces.append(data[copied:])
    return b"".join(pieces)


def _action_span(data: bytes, offset: int, action: str) -> tuple[int, int, bytes]:
    """The edit that gives the start tag at `offset` action=`action`: (start, stop,
    replacement) in `data`. Reads that one tag only."""
    value = action.encode("ascii")
    attributes = _attributes(data, offset)
    for name, start, stop, _quote in attributes:
        if name == b"action":
            return start, stop, value
    # No action attribute yet: add one after the last attribute, in its quote style.
    if attributes:
        quote = attributes[-1][3]
        insert_at = attributes[-1][2] + 1
    else:
        quote = b"'"
        insert_at = offset + len(b"<watchdog")
    return insert_at, insert_at, b" action=" + quote + value + quote


def _skip_space(data: bytes, position: int) -> int:
    while position < len(data) and data[position] in _SPACE:
        position += 1
    return position


def _attributes(data: bytes, offset: int) -> list[tuple[bytes, int, int, bytes]]:
    """(name, value start, value end, quote) of each attribute of the start tag at
    `offset`.

    expat has already checked the document is well-formed, so the tag is
    `<name (S attr S? = S? quoted-value)* S? /?>`; any surprise is a ScanError.
    """
    if not data.startswith(b"<watchdog", offset):
        raise ScanError(f"no <watchdog> start tag at byte {offset}")
    position = offset + len(b"<watchdog")
    found = []
    try:
        while True:
            position = _skip_space(data, position)
            if data[position:position + 1] in (b"/", b">"):
                return found
            equals = data.index(b"=", position)
            name = data[position:equals].strip(_SPACE)
            position = _skip_space(data, equals + 1)
            quote = data[position:position + 1]
            if quote not in (b"'", b'"'):
                raise ScanError(f"unexpected byte {quote!r} in a <watchdog> tag")
            close = data.index(quote, position + 1)
            found.append((name, position + 1, close, quote))
            position = close + 1
    except ScanError:
        raise
    except ValueError as exc:  # bytes.index found nothing: a truncated tag
        raise ScanError(f"unreadable <watchdog> tag at byte {offset}") from exc
