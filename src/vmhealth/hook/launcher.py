"""The executable libvirt runs: hooks/vmhealth, rendered for an interpreter and a path.

    python3 -m vmhealth.hook.launcher [--interpreter PY] [--package-parent DIR]

prints it. hooks/vmhealth in the source tree is the rendering with the defaults (a
unit test keeps the two identical); `vmhealth hook install` and the RPM render it for
the Python and site-packages directory vmhealth is actually installed in.

Why `-IS`: -I ignores PYTHON* variables and the user's site directory; -S skips
importing site, a few milliseconds on every hook run (benchmarks/bench_hook.py). The
package is then found through PACKAGE_PARENT, or through site-packages when that is
empty (one failed import first: slower, still correct).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_INTERPRETER = "/usr/bin/python3"

_TEMPLATE = '''\
#!{interpreter} -IS
# vmhealth's libvirt qemu hook, installed as /etc/libvirt/hooks/qemu.d/vmhealth.
# Rendered by vmhealth.hook.launcher; the logic is vmhealth.hook.main (docs/hook.md).
import sys

PACKAGE_PARENT = {package_parent!r}

if PACKAGE_PARENT:
    sys.path.insert(0, PACKAGE_PARENT)
try:
    from vmhealth.hook.main import run
except ImportError:
    import site

    site.main()
    try:
        from vmhealth.hook.main import run
    except ImportError as exc:
        # A half-removed vmhealth must never be why a domain does not start.
        sys.stderr.write(f"vmhealth hook: cannot import vmhealth ({{exc}}); doing nothing\\n")
        sys.exit(0)
sys.exit(run())
'''


def render(interpreter: str = DEFAULT_INTERPRETER, package_parent: str = "") -> str:
    if not interpreter.startswith("/") or any(ch.isspace() for ch in interpreter):
        raise ValueError(f"the interpreter must be an absolute path without spaces "
                         f"(a shebang line cannot quote), got {interpreter!r}")
    return _TEMPLATE.format(interpreter=interpreter, package_parent=package_parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m vmhealth.hook.launcher",
                                     description="Print the vmhealth libvirt hook.")
    parser.add_argument("--interpreter", default=DEFAULT_INTERPRETER)
    parser.add_argument("--package-parent", default="",
                        help="the directory holding the vmhealth package "
                             "(e.g. /usr/lib/python3.9/site-packages)")
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.interpreter, args.package_parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
