"""What every `vmhealth` command module shares: the click context, its errors, --connect.

A module of its own so that cli.py can import the command groups of cli_guest,
cli_daemon and cli_hook at its top, and each of them can be imported alone: the
command modules import this one, never cli.py.

Exit codes, the same for every command:

    0  done; for a command that answers a question, the answer is yes (`status
       DOMAIN`: live and ready; `probe`: success; `wait`: the condition came;
       `hook status`: installed and current; `guest check`: nothing missing)
    1  failed (libvirt or the daemon unreachable, libvirt refused, no such domain,
       timed out), or the answer to the question is no
    2  bad usage: an unknown option, a bad option value, an invalid spec or manifest,
       an invalid configuration file

A command ends with a non-zero code only by raising one of the three exceptions
below (click's own usage errors exit 2 as UsageFailure does); none calls sys.exit()
or ctx.exit(). Messages go to stderr as one line naming the problem and the fix,
control characters escaped (a message may quote a guest or a daemon).

The connection: `--connect URI` (option `connect_option`, before or after the
subcommand), else $LIBVIRT_DEFAULT_URI, else vmhealth.connection.DEFAULT_URI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from vmhealth.connection import DEFAULT_URI, LibvirtError, lookup_domain, open_connection
from vmhealth.terminal import for_terminal

EXIT_OK = 0
EXIT_FAILED = 1  # also: the answer to a question is no (NotOk)
EXIT_USAGE = 2


class _Escaped(click.ClickException):
    def __init__(self, message: str) -> None:
        super().__init__(for_terminal(message))


class Failure(_Escaped):
    """The operation failed (libvirt or the daemon unreachable, refused, unknown
    domain, timed out): exit 1."""

    exit_code = EXIT_FAILED


class UsageFailure(_Escaped):
    """Bad input from the operator (invalid spec, manifest or configuration): exit 2."""

    exit_code = EXIT_USAGE


class NotOk(click.exceptions.Exit):
    """The command answered a question and the answer is no (not live and ready, the
    probe failed, the hook is not installed): exit 1, with nothing more to say than
    what the command printed already."""

    def __init__(self) -> None:
        super().__init__(EXIT_FAILED)


@dataclass
class Context:
    uri: str | None = None
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


pass_context = click.make_pass_decorator(Context, ensure=True)


def connect_option(command):
    """`-c/--connect URI`, the one definition: on `vmhealth` itself and on every
    subcommand that talks to libvirt, so both `vmhealth -c URI apply ...` and
    `vmhealth apply web1 -c URI ...` work, as operators type it; the later one wins."""

    def remember(ctx: click.Context, _param, value: str | None) -> None:
        if value is not None:
            ctx.ensure_object(Context).uri = value

    return click.option("-c", "--connect", metavar="URI", expose_value=False,
                        callback=remember,
                        help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, else "
                             f"{DEFAULT_URI}).")(command)
