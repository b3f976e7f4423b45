"""Put the hook where libvirt runs it, take it away, and tell how things stand.

Where: `<hooks_dir>/qemu.d/vmhealth`, hooks_dir being /etc/libvirt/hooks (libvirt's
compiled-in SYSCONFDIR/libvirt/hooks; a libvirt built with another prefix has another,
which `vmhealth hook install --hooks-dir` names). libvirt >= 6.5 runs every executable
in qemu.d and finds the directory on its own (virHookCheck looks at `qemu.d` when
there is no `qemu` script), so no /etc/libvirt/hooks/qemu is needed; `stub=True` adds
an empty one for a build that does not (an extra /bin/sh run per hook call, so not by
default).

libvirt caches which hooks exist when the daemon starts and on SIGHUP, so installing
ends with a reload of virtqemud (modular daemons) or libvirtd: `systemctl reload` where
systemd runs, otherwise SIGHUP to the pid in the daemon's pidfile.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import vmhealth
from vmhealth.hook import spool
from vmhealth.hook.launcher import render

DEFAULT_HOOKS_DIR = Path("/etc/libvirt/hooks")
# RUNSTATEDIR/libvirt of distribution builds: virtqemud.pid, libvirtd.pid.
DEFAULT_PID_DIR = Path("/run/libvirt")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted()'s test
HOOK_NAME = "vmhealth"
DAEMONS = ("virtqemud", "libvirtd")  # the modular daemon first: it is the newer default
STUB_TEXT = ("#!/bin/sh\n"
             "# Written by `vmhealth hook install --stub` so that libvirt looks in qemu.d/;\n"
             "# `vmhealth hook uninstall` removes it again. It does nothing.\n"
             "exit 0\n")
SELINUX_BOOLEAN = "virt_hooks_unconfined"


class InstallError(RuntimeError):
    """Something the operator must fix; the message says what."""


def hook_path(hooks_dir: Path) -> Path:
    return hooks_dir / "qemu.d" / HOOK_NAME


def stub_path(hooks_dir: Path) -> Path:
    return hooks_dir / "qemu"


def hook_text() -> str:
    """The hook as this vmhealth installation would run it."""
    package_parent = str(Path(vmhealth.__file__).resolve().parents[1])
    try:
        return render(sys.executable, package_parent)
    except ValueError as exc:
        raise InstallError(str(exc)) from None


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        temporary.chmod(0o755)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def install(hooks_dir: Path, *, stub: bool = False) -> list[str]:
    """Install (or update) the hook; return what was done, one line each."""
    done = []
    target = hook_path(hooks_dir)
    text = hook_text()
    if target.is_file() and target.read_text(errors="replace") == text \
            and os.access(target, os.X_OK):
        done.append(f"{target}: already installed and current")
    else:
        verb = "updated" if target.exists() else "installed"
        _write_executable(target, text)
        done.append(f"{target}: {verb} (runs {sys.executable} -IS, vmhealth from "
                    f"{Path(vmhealth.__file__).resolve().parents[1]})")
    if stub:
        if stub_path(hooks_dir).exists():
            done.append(f"{stub_path(hooks_dir)}: left as it is (already present)")
        else:
            _write_executable(stub_path(hooks_dir), STUB_TEXT)
            done.append(f"{stub_path(hooks_dir)}: installed an empty stub")
    return done


def uninstall(hooks_dir: Path) -> list[str]:
    done = []
    target = hook_path(hooks_dir)
    if target.exists():
        target.unlink()
        done.append(f"{target}: removed")
    else:
        done.append(f"{target}: was not installed")
    stub = stub_path(hooks_dir)
    if stub.is_file() and stub.read_text(errors="replace") == STUB_TEXT:
        stub.unlink()
        done.append(f"{stub}: removed the stub vmhealth had installed")
    return done


# ---------------------------------------------------------------------------
# The libvirt daemon
# ---------------------------------------------------------------------------

def _systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir() and shutil.which("systemctl") is not None


def _pid_from(pidfile: Path, daemon: str) -> int | None:
    """The daemon's pid, if the pidfile names a live process of that name (a stale
    pidfile may name a recycled pid that is something else entirely)."""
    try:
        pid = int(pidfile.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == daemon[:15] else None


def running_daemon(pid_dir: Path = DEFAULT_PID_DIR) -> tuple[str, int | None] | None:
    """(name, pid or None under systemd) of the libvirt daemon running QEMU, if any."""
    if _systemd_running():
        for daemon in DAEMONS:
            active = subprocess.run(["systemctl", "is-active", "--quiet", f"{daemon}.service"],
                                    timeout=30, check=False)
            if active.returncode == 0:
                return daemon, None
        return None
    for daemon in DAEMONS:
        pid = _pid_from(pid_dir / f"{daemon}.pid", daemon)
        if pid is not None:
            return daemon, pid
    return None


def reload_libvirt(pid_dir: Path = DEFAULT_PID_DIR) -> str:
    """Make the running daemon look for hooks again; say what was done."""
    found = running_daemon(pid_dir)
    if found is None:
        return ("neither virtqemud nor libvirtd is running: the hook takes effect when "
                "one starts")
    daemon, pid = found
    if pid is None:
        done = subprocess.run(["systemctl", "reload", f"{daemon}.service"],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise InstallError(f"`systemctl reload {daemon}` failed: {done.stderr.strip()}; "
                               "reload it by hand for the hook to take effect")
        return f"reloaded {daemon} (systemctl reload {daemon}): the hook is active"
    os.kill(pid, signal.SIGHUP)
    return f"sent SIGHUP to {daemon} (pid {pid}) so it looks for hooks again"


# ---------------------------------------------------------------------------
# SELinux (Fedora, RHEL): hooks run confined unless virt_hooks_unconfined is on
# ---------------------------------------------------------------------------

def selinux_advice(search_path: str | None = None) -> str:
    getsebool = shutil.which("getsebool", path=search_path)
    if getsebool is None:
        return "SELinux: not present (no getsebool); nothing to do"
    enabled = shutil.which("selinuxenabled", path=search_path)
    if enabled is not None and subprocess.run([enabled], timeout=10,
                                              check=False).returncode != 0:
        return "SELinux: disabled; nothing to do"
    done = subprocess.run([getsebool, SELINUX_BOOLEAN], capture_output=True, text=True,
                          timeout=10, check=False)
    if done.returncode != 0:
        return (f"SELinux: this policy has no {SELINUX_BOOLEAN} boolean (older "
                "selinux-policy); hooks run in libvirt's own domain; nothing to set")
    if done.stdout.strip().endswith("on"):
        return f"SELinux: {SELINUX_BOOLEAN} is on: the hook runs unconfined; nothing to do"
    return (f"SELinux: {SELINUX_BOOLEAN} is off: the hook runs confined and may be denied "
            f"writing {spool.spool_dir()} (the daemon then learns of domains only from "
            f"libvirt events). To allow it: setsebool -P {SELINUX_BOOLEAN} on")


# ---------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------

def status(hooks_dir: Path, pid_dir: Path = DEFAULT_PID_DIR) -> tuple[bool, list[str]]:
    """(hook installed and current, report lines)."""
    lines = []
    spool_directory = spool.spool_dir()
    target = hook_path(hooks_dir)
    current = False
    if not target.exists():
        lines.append(f"hook: not installed ({target} missing): run `vmhealth hook install`")
    elif not os.access(target, os.X_OK):
        lines.append(f"hook: {target} is not executable, so libvirt skips it: run "
                     "`vmhealth hook install`")
    elif target.read_text(errors="replace") != hook_text():
        lines.append(f"hook: {target} differs from what this vmhealth installs (another "
                     "version or Python): `vmhealth hook install` updates it")
    else:
        current = True
        lines.append(f"hook: {target} installed and current")
    stub = stub_path(hooks_dir)
    if stub.is_file() and stub.read_text(errors="replace") == STUB_TEXT:
        lines.append(f"stub: {stub} (installed by vmhealth)")
    elif stub.exists():
        lines.append(f"stub: {stub} is another program's qemu hook; it runs before ours")
    found = running_daemon(pid_dir)
    if found is None:
        lines.append("libvirt: neither virtqemud nor libvirtd is running")
    else:
        daemon, pid = found
        where = f"pid {pid}" if pid is not None else "systemd"
        lines.append(f"libvirt: {daemon} is running ({where}); it sees a newly installed "
                     "hook after a reload, which `vmhealth hook install` does")
    lines.append(selinux_advice())
    try:
        spooled = sum(1 for name in os.listdir(spool_directory)
                      if name.endswith(spool.XML_SUFFIX) and not name.startswith("."))
        lines.append(f"spool: {spool_directory}: {spooled} running domain(s) handed over")
    except OSError:
        lines.append(f"spool: {spool_directory} does not exist yet (no domain with a "
                     "health spec has started)")
    return current, lines
