"""json.loads for a str, without importing the json package.

Why: the libvirt hook decodes a domain's spec while libvirt waits for the domain to
start, and `import json` costs nearly a bare interpreter start (about 9 ms here), most
of it the `re` module and the regular expressions json.decoder, json.encoder and
json.scanner compile at import. The decoding itself is done by C code that ships
with CPython and imports in well under a millisecond: the `_json` scanner, which
json.loads uses too. This module drives that scanner the way json.JSONDecoder does
with its defaults (strict, no hooks, NaN and Infinity accepted), so values and error
messages are json.loads' own; tests/unit/test_jsontext.py compares the two.

Errors are json.JSONDecodeError (the json package is imported only then). Without
`_json` (not CPython) this is json.loads.

Unlike json.loads, loads() can bound what it accepts (`max_chars`, `max_depth`):
the spec in a domain's metadata is written by whoever may define domains, and
json.loads would meet `[[[[...` ten thousand levels deep with a RecursionError, an
exception no caller expects from a decoder. A text beyond a bound raises
JSONLimitError (a ValueError), with a message that names the bound.
"""

from __future__ import annotations

try:
    from _json import make_scanner as _make_scanner
except ImportError:  # pragma: no cover - every CPython has _json
    _make_scanner = None

# JSON's whitespace (RFC 8259 "ws"), as json.decoder's WHITESPACE pattern.
_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """The attributes the C scanner reads from its context: json.JSONDecoder()'s."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan_once = _make_scanner(_Context()) if _make_scanner is not None else None


class JSONLimitError(ValueError):
    """The text is longer, or nests deeper, than the caller allows."""


def loads(text: str, *, max_chars: int | None = None, max_depth: int | None = None):
    """json.loads(text) for a str: the same value, or the same JSONDecodeError.

    `max_chars`: refuse a longer text before decoding it. `max_depth`: refuse
    arrays and objects nested deeper than that (`[]` is one level, `[[]]` two).
    Either raises JSONLimitError.
    """
    if max_chars is not None and len(text) > max_chars:
        raise JSONLimitError(f"{len(text)} characters long, more than the {max_chars} "
                             "allowed")
    try:
        value = _decode(text)
    except RecursionError:
        # The C scanner recurses once per level and gives up near the interpreter's
        # recursion limit (1000), far beyond any bound a caller sets here.
        if max_depth is None:
            raise
        raise JSONLimitError(_too_deep(max_depth)) from None
    if max_depth is not None and _nests_deeper(text, value, max_depth):
        raise JSONLimitError(_too_deep(max_depth))
    return value


def _too_deep(max_depth: int) -> str:
    return f"nested deeper than {max_depth} levels"


def _nests_deeper(text: str, value, max_depth: int) -> bool:
    """Whether `value` (decoded from `text`) has arrays/objects more than `max_depth`
    levels deep. Iterative, so the check itself cannot exhaust the stack."""
    # Every level opens a bracket: with no more brackets than levels allowed (every
    # real spec), nothing needs walking.
    if isinstance(text, str) and text.count("[") + text.count("{") <= max_depth:
        return False
    pending = [(value, 1)] if isinstance(value, (dict, list)) else []
    while pending:
        container, depth = pending.pop()
        if depth > max_depth:
            return True
        children = container.values() if isinstance(container, dict) else container
        pending.extend((child, depth + 1) for child in children
                       if isinstance(child, (dict, list)))
    return False


def _decode(text: str):
    if _scan_once is None or not isinstance(text, str):
        import json

        return json.loads(text)
    if text.startswith("\ufeff"):
        _fail("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value, end = _scan_once(text, _skip_whitespace(text, 0))
    except StopIteration as stop:
        _fail("Expecting value", text, stop.value)
    end = _skip_whitespace(text, end)
    if end != len(text):
        _fail("Extra data", text, end)
    return value


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in _WHITESPACE:
        position += 1
    return position


def _fail(message: str, text: str, position: int):
    from json import JSONDecodeError

    raise JSONDecodeError(message, text, position) from None
