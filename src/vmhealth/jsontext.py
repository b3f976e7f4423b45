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


def loads(text: str):
    """json.loads(text) for a str: the same value, or the same JSONDecodeError."""
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
