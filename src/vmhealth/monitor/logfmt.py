"""Structured logs: one line per record, `key=value` fields, for the journal via stderr.

Call sites pass fields with `extra=log_fields(...)`; the formatter prints them after
the message, quoted when they contain spaces. HTTP header values never reach a log:
probes report messages that leave them out, and nothing here logs a spec.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

FIELDS_ATTR = "vmhealth_fields"


def log_fields(**fields: Any) -> dict[str, Any]:
    return {FIELDS_ATTR: fields}


def _format_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(ch.isspace() or ch in '="' for ch in text):
        return json.dumps(text)
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
