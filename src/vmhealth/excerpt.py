"""The one way guest-controlled text reaches a message, an event, a log or a terminal.

Guests are untrusted: an HTTP answer, an agent's error, an exec's output or exit
status, a redirect's host name can be megabytes long and hold terminal escape
sequences. Everything derived from them goes through `excerpt()` before it is put in
a status reason, an event or a log line: bounded, one line, printable characters
only. The CLI escapes again whatever it prints (`escape_for_terminal`), whatever the
source, because a daemon of another version may have stored anything.

Imports nothing beyond the standard library's builtins: the hook may use it.
"""

from __future__ import annotations

# Long enough for a useful error or output line, short enough that a status reason
# or an event stays a line: 1000 events of this size are a few hundred KiB at most.
DEFAULT_LIMIT = 200
ELLIPSIS = "..."


def excerpt(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` (bytes, str or anything with a str()) as at most `limit` printable
    characters on one line, with "..." appended when it was cut."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        # Decode no more than can be shown (a UTF-8 character is at most 4 bytes).
        text = bytes(value[:limit * 4]).decode("utf-8", "replace")
        cut = len(value) > limit * 4
    else:
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception:  # noqa: BLE001 - a hostile object's __str__ must not escape
            text = f"<{type(value).__name__}>"
        cut = False
    if len(text) > limit:
        text, cut = text[:limit], True
    shown = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return shown + ELLIPSIS if cut else shown


def escape_for_terminal(text: str) -> str:
    """`text` with every control character shown as an escape (\\x1b, \\n...), so that
    nothing printed can move the cursor, recolour or retitle the operator's terminal.
    Tabs are kept; nothing is cut (the daemon bounds what it stores)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else _escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
