"""Print the bash completion script click would emit for PROG (default vmhealth).

    python3 packaging/rpm/bash_completion.py [PROG] > vmhealth.bash

Same text as `_VMHEALTH_COMPLETE=bash_source vmhealth` (click 8) or `source_bash`
(click 7, EL9), but without importing vmhealth.cli: the script only names the program
and the environment variable, and completions are computed by the installed command
at run time. So the RPM build needs python3-click, not every runtime dependency.
"""

from __future__ import annotations

import sys

import click


def completion_variable(prog_name: str) -> str:
    # click's own rule: _<PROG>_COMPLETE, dashes and dots as underscores, upper case.
    return "_{}_COMPLETE".format(prog_name.replace("-", "_").replace(".", "_").upper())


def bash_source(prog_name: str) -> str:
    variable = completion_variable(prog_name)
    try:
        from click.shell_completion import BashComplete
    except ImportError:  # click 7
        from click._bashcomplete import get_completion_script

        return get_completion_script(prog_name, variable, "bash")
    return BashComplete(click.Group(prog_name), {}, prog_name, variable).source()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        sys.stderr.write("usage: bash_completion.py [PROG]\n")
        return 2
    # click.echo adds one newline after the script; so do we, to match byte for byte.
    sys.stdout.write(bash_source(argv[0] if argv else "vmhealth") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
