"""What every `vmhealth` command module shares: the click context, its errors, --connect.

A module of its own so that cli.py can import the command groups of cli_guest,
cli_daemon and cli_hook at its top, and each of them can be imported alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from vmhealth.connection import LibvirtError, lookup_domain, open_connection


class UsageFailure(click.ClickException):
    """Bad input from the operator (invalid spec, unreadable manifest): exit 2."""

    exit_code = 2


class Failure(click.ClickException):
    """The operation failed (libvirt unreachable, refused, unknown domain): exit 1."""

    exit_code = 1


@dataclass
class Context:
    uri: str | None
    # An open connection to reuse; tests hand one in (a libvirt test-driver connection
    # keeps its state only for its own lifetime).
    conn: Any = None

    def connect(self):
        if self.conn is None:
            try:
                self.conn = open_connection(self.uri)
            except LibvirtError as exc:
                raise Failure(str(exc)) from None
        return self.conn

    def domain(self, name: str):
        conn = self.connect()
        try:
            return conn, lookup_domain(conn, name)
        except LibvirtError as exc:
            raise Failure(str(exc)) from None


pass_context = click.make_pass_decorator(Context)


def connect_option(command):
    """`--connect` after the subcommand too (`vmhealth apply web1 -c URI -f x.yaml`), as
    operators type it; it overrides the one given before the subcommand."""

    def remember(ctx: click.Context, _param, value: str | None) -> None:
        if value is not None:
            ctx.find_object(Context).uri = value

    return click.option("-c", "--connect", metavar="URI", expose_value=False,
                        callback=remember,
                        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else "
                             "qemu:///system).")(command)
