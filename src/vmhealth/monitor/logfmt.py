"""Structured logs: one line per record, `key=value` fields, for the journal via stderr.

Call sites pass fields with `extra=log_fields(...)`; the formatter prints them after
the message, quoted when they contain spaces. HTTP header values never reach a log:
probes report messages that leave them out, and nothing here logs a spec.

Whatever a caller passes (guest text included), a record is one line of printable
characters: a value with a control character, a space, `=` or `"` is written as a
JSON string (every control character escaped), and every value, the message and a
traceback included, is cut to VALUE_LIMIT characters (before escaping, which can make
a character six).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

FIELDS_ATTR = "vmhealth_fields"
# Room for a traceback; journald cuts a line at 48 KiB anyway.
VALUE_LIMIT = 8000


def log_fields(**fields: Any) -> dict[str, Any]:
    return {FIELDS_ATTR: fields}


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > VALUE_LIMIT:
        text = text[:VALUE_LIMIT] + "..."
    if text == "" or not text.isprintable() or any(ch.isspace() or ch in '="' for ch in text):
        # ensure_ascii escapes every control character but DEL, which is ASCII.
        return json.dumps(text).replace("\x7f", "\\u007f")
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_format_value(record.getMessage())}"]
        for key, value in getattr(record, FIELDS_ATTR, {}).items():
            parts.append(f"{key}={_format_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_format_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
