"""The e2e entry point: run pytest inside the sandbox namespaces.

    python -m tests.e2e.harness.run [PYTEST ARGS...]   (tests/e2e unless a test path is given)

Outside the namespaces it re-executes itself under unshare (harness.namespace); inside,
as the namespace's pid 1, it runs pytest as its child.  When pytest ends, pid 1 exits
and the kernel kills anything the tests left running.
"""

from __future__ import annotations

import sys
import time

from tools.sandbox import cloud_image, namespace, paths

DEFAULT_PATH = "tests/e2e"


def with_default_path(args: list[str]) -> list[str]:
    """Add tests/e2e unless the arguments already name a test path.

    pyproject's testpaths would otherwise collect every test under tests/.
    """
    for arg in args:
        if not arg.startswith("-") and (paths.REPO / arg.split("::")[0]).exists():
            return args
    return [*args, DEFAULT_PATH]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--inside":
        args = argv[1:]
        if args and args[0] == "--":
            args = args[1:]
        start = time.monotonic()
        status = namespace.run_as_init(
            [sys.executable, "-m", "pytest", *with_default_path(args)], cwd=str(paths.REPO)
        )
        # The suite's one wall time: sandbox, every test and the teardown.
        print(f"e2e: wall time {time.monotonic() - start:.1f}s (pytest exited {status}, "
              "sandbox torn down)", file=sys.stderr)
        return status
    # Needs the network, which the sandbox's namespace does not have.
    cloud_image.build_if_selected(with_default_path(argv))
    namespace.reexec("tests.e2e.harness.run", argv)
    return 127  # not reached: reexec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
