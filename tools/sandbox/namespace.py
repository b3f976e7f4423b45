"""Run a command inside fresh mount, network and pid namespaces.

Why a pid namespace: its first process is the namespace's init, and when that process
exits the kernel kills every other process in the namespace.  So libvirtd, virtlogd
and every QEMU the tests start die with the session, even if pytest crashes or is
killed with SIGKILL.  Why the mount namespace: the tmpfs and bind mounts over
libvirt's directories are seen by nothing outside.  Why the network namespace: the
test bridge and the guests' addresses never touch the host's network.

The outer half (`reexec`) replaces the current process with unshare(1); the inner half
(`run_as_init`) is the namespace's pid 1: it runs the real command as a child and reaps
every orphan (libvirtd and virtlogd daemonize, so they are re-parented to pid 1).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

# Set in the environment of everything started inside the namespace.
MARKER = "VMHEALTH_E2E_SANDBOX"


def inside() -> bool:
    """True in a process started by run_as_init (inside the private namespaces)."""
    return os.environ.get(MARKER) == "1"


def reexec(module: str, args: list[str]) -> None:
    """Replace this process with `python -m module --inside args` under unshare."""
    if os.geteuid() != 0:
        sys.exit("the e2e sandbox needs root (it mounts over libvirt's directories)")
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("unshare(1) is missing: install util-linux")
    argv = [
        unshare,
        "--mount",
        "--net",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        # If unshare itself is killed, its child (our pid 1) gets SIGKILL, and with
        # it the whole namespace.
        "--kill-child",
        "--",
        sys.executable,
        "-m",
        module,
        "--inside",
        *args,
    ]
    os.execv(unshare, argv)  # noqa: S606 (a fixed argv: no shell to avoid)


def run_as_init(argv: list[str], cwd: str | None = None) -> int:
    """Be pid 1: run argv as a child, reap orphans, return the child's exit status."""
    if os.getpid() != 1:
        raise RuntimeError("run_as_init must run as pid 1 of a new pid namespace")
    env = dict(os.environ)
    env[MARKER] = "1"
    # Ctrl-C reaches the child directly from the terminal; pid 1 must outlive it to
    # reap, and SIGTERM (a CI timeout) is passed on so pytest can clean up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # An ignored signal stays ignored across exec: give the child Ctrl-C back (so
    # Python raises KeyboardInterrupt there and the cleanup code runs).
    child = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    status = None
    while status is None:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(wait_status)
            child.returncode = status
    # Returning ends pid 1: the kernel SIGKILLs whatever is left in the namespace.
    if status is None:
        return 1
    return status if status >= 0 else 128 - status
