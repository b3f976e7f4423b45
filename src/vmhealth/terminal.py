"""Printing what the daemon or libvirt says into the operator's terminal.

The CLI shows text it did not write: probe reasons and results, event messages, a
stored spec, the daemon's error messages. Any of it may come from a guest, or from a
daemon of another version that bounded nothing. Every line printed from such a source
goes through `echo`, which shows control characters as escapes (\\x1b, \\x07...), so
nothing printed can move the cursor, clear the screen or retitle the terminal.
"""

from __future__ import annotations

import click

from vmhealth.excerpt import escape_for_terminal


def for_terminal(text: str) -> str:
    """`text` with every control character escaped but the line breaks between lines."""
    return "\n".join(escape_for_terminal(line) for line in text.split("\n"))


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    click.echo(for_terminal(text), err=err, nl=nl)
