"""A second libvirt host in the same sandbox, for live migration between two libvirtds.

The sandbox (harness.sandbox) is one host: one libvirtd with private /etc/libvirt,
/run/libvirt and /var/lib/libvirt.  The peer is another libvirtd on the same machine
that must not share any of those, so it runs in a mount namespace of its own, nested
inside the sandbox's: fresh tmpfs over libvirt's directories (and /run/vmhealth, where
the peer's hook keeps its spool), its own logs, its own host UUID (libvirt refuses to
migrate a domain to a host with the sandbox's UUID: "Attempt to migrate guest to the
same host").  It shares the sandbox's network namespace, so guests keep the same
bridge and the migration stream runs over it, and the sandbox's /run tmpfs, where the
peer puts its client sockets (PEER_DIR) for the tests and the peer's vmhealth daemon.

A holder process (`python -m tests.e2e.harness.peer --hold LOG_DIR`, started with
unshare) makes the mounts, installs the vmhealth hook with `vmhealth hook install`
as the package does, starts virtlogd and libvirtd, prints READY and waits for its
stdin to close; then it stops both.  If the test session dies instead, the sandbox's
pid namespace takes everything with it.
"""

from __future__ import annotations

import selectors
import shutil
import subprocess
import sys
from pathlib import Path

from tools.sandbox import paths
from tools.sandbox.sandbox import QEMU_CONF, bind, mount_tmpfs, start_daemon, stop_pid
from tools.sandbox.waiting import wait_until

# On the sandbox's /run tmpfs (not hidden by the peer's own mounts): the peer's
# client sockets and its daemons' pid files, visible to the tests.
PEER_DIR = Path("/run/vmh-peer")
SOCKET = PEER_DIR / "libvirt-sock"
URI = f"qemu+unix:///system?socket={SOCKET}"
PRIVATE_DIRS = ("/run/libvirt", "/run/vmhealth", "/etc/libvirt", "/var/lib/libvirt")
# Any UUID but the sandbox's (which libvirt derives from SMBIOS or machine-id).
HOST_UUID = "6d1f0a3e-7c52-4b8e-9a41-2f0c5e7b9d13"
READY = "READY"


def _libvirtd_conf() -> str:
    return (
        "# Written by the vmhealth e2e harness: the peer host of migration tests.\n"
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        f'unix_sock_dir = "{PEER_DIR}"\n'
        f'host_uuid = "{HOST_UUID}"\n'
    )


def _vmhealth() -> list[str]:
    script = Path(sys.executable).with_name("vmhealth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]


def hold(log_dir: Path, console_dir: Path) -> int:
    """The holder: runs in the peer's mount namespace (see the module docstring)."""
    for path in PRIVATE_DIRS:
        mount_tmpfs(path)
    log_dir.mkdir(parents=True, exist_ok=True)
    bind(log_dir, Path("/var/log/libvirt"))
    # A migrated guest's serial console keeps writing to the file it had.
    bind(console_dir, Path("/var/log/libvirt/console"))
    Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
    Path("/etc/libvirt/libvirtd.conf").write_text(_libvirtd_conf())
    # Installed before libvirtd starts, so it finds the hook without a reload.
    installed = subprocess.run([*_vmhealth(), "hook", "install"], capture_output=True,
                               text=True, timeout=60, check=False)
    if installed.returncode != 0:
        print(f"vmhealth hook install failed: {installed.stderr}", flush=True)
        return 1
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    pids = [start_daemon(["virtlogd", "-d", "-p", str(PEER_DIR / "virtlogd.pid")])]
    try:
        pids.append(start_daemon(["libvirtd", "-d", "-p", str(PEER_DIR / "libvirtd.pid")]))
        print(READY, flush=True)
        # For the life of the peer: until the tests close our stdin, or the sandbox's
        # pid namespace ends and takes us with it.
        sys.stdin.read()
    finally:
        for pid in reversed(pids):
            stop_pid(pid)
    return 0


def _read_line(stream, timeout: float) -> str:
    """One line from a pipe, or a timeout: readline alone could block for ever."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"the peer host said nothing in {timeout:.0f}s")
    return stream.readline().strip()


class PeerHost:
    """Start with start(), stop with stop() (idempotent).  Needs a started Sandbox."""

    uri = URI

    def __init__(self, log_dir: Path, console_dir: Path) -> None:
        """console_dir: the sandbox's console log directory, as seen from the host."""
        self.log_dir = log_dir
        self.console_dir = console_dir
        self._holder: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        unshare = shutil.which("unshare")
        assert unshare, "unshare(1) is missing"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(  # noqa: S603 - fixed argv
            [unshare, "--mount", "--propagation", "private", "--",
             sys.executable, "-m", "tests.e2e.harness.peer", "--hold", str(self.log_dir),
             str(self.console_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(paths.REPO))
        assert self._holder.stdout is not None
        # The first start probes QEMU's capabilities unless the shared cache has them.
        line = _read_line(self._holder.stdout, timeout)
        if line != READY:
            self.stop()
            raise AssertionError(f"the peer host did not start: {line}")
        wait_until(self._answers, timeout=timeout, what="the peer libvirtd's socket")

    def _answers(self) -> bool:
        result = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                                timeout=60, check=False)
        return result.returncode == 0

    def stop(self) -> None:
        holder, self._holder = self._holder, None
        if holder is None:
            return
        for domain in subprocess.run(["virsh", "-c", self.uri, "list", "--name"],
                                     capture_output=True, text=True, timeout=20,
                                     check=False).stdout.split():
            subprocess.run(["virsh", "-c", self.uri, "destroy", domain],
                           capture_output=True, timeout=20, check=False)
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--hold":
        sys.exit("usage: python -m tests.e2e.harness.peer --hold LOG_DIR CONSOLE_DIR "
                 "(started by PeerHost)")
    sys.exit(hold(Path(sys.argv[2]), Path(sys.argv[3])))
