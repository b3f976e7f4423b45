"""A private libvirtd: its own config, state, logs, bridge and hook directory.

Must run inside the namespaces made by tools.sandbox.namespace (it refuses otherwise): every
mount below is then invisible to the host, and the host's /etc/libvirt, /run/libvirt
and network are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import hostcheck, namespace, paths
from .waiting import GiveUp, wait_until

# Directories libvirt (and, later, vmhealth) write to; each gets a private tmpfs.
# A tmpfs over all of /run, so that /run/libvirt and /run/vmhealth are made inside it
# and not as empty mount points on the host.
PRIVATE_DIRS = (
    "/run",
    "/run/libvirt",
    "/run/vmhealth",
    "/etc/libvirt",
    "/var/lib/libvirt",
)
# Kept between runs (under build/): libvirt caches QEMU's probed capabilities here and
# revalidates them against the QEMU and libvirt binaries, so reuse is safe and saves
# the probe on every start.
CACHE_DIR = Path("/var/cache/libvirt")
LOG_DIR = Path("/var/log/libvirt")
HOOK_DIR = Path("/etc/libvirt/hooks/qemu.d")
# Private account files live in the sandbox's own /etc/libvirt tmpfs.
ACCOUNTS_DIR = Path("/etc/libvirt/.e2e-accounts")
SOCKET = Path("/run/libvirt/libvirt-sock")
URI = "qemu:///system"


@dataclass(frozen=True)
class Bridge:
    """The test bridge inside the network namespace; guests take .10 and up."""

    name: str = "vmhbr0"
    ipv4: str = "192.168.213.1"
    prefix4: int = 24
    ipv6: str = "fd00:213::1"
    prefix6: int = 64

    def guest_ipv4(self, index: int) -> str:
        return f"192.168.213.{10 + index}"

    def guest_ipv6(self, index: int) -> str:
        return f"fd00:213::{0x10 + index:x}"


QEMU_CONF = """\
# Written by the vmhealth e2e harness; private to its mount namespace.
user = "root"
group = "root"
# Debian builds libvirt with libvirt-qemu as the default swtpm user; that account only
# exists with libvirt-daemon-system, which the sandbox does not need.
swtpm_user = "root"
swtpm_group = "root"
# No SELinux/AppArmor labelling and no cgroups: nothing outside the sandbox changes.
security_driver = "none"
cgroup_controllers = [ ]
# No per-domain mount namespace: QEMU sees the sandbox's files as they are.
namespaces = [ ]
"""

LIBVIRTD_CONF = """\
# Written by the vmhealth e2e harness.
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def run(argv: list[str], timeout: float = 30) -> None:
    subprocess.run(argv, check=True, timeout=timeout)


def mount_tmpfs(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path])


def bind(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(source), str(target)])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); our pid 1 reaps quickly, but check the state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def start_daemon(argv: list[str]) -> int:
    """Run a daemon that forks away and writes its pid file (argv's last word); its pid."""
    pidfile = Path(argv[-1])
    pidfile.unlink(missing_ok=True)
    run(argv)
    text = wait_until(
        lambda: pidfile.exists() and pidfile.read_text().strip(),
        timeout=15,
        what=f"{pidfile.name}",
    )
    return int(text)


def stop_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout`."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not pid_alive(pid), timeout=timeout, what=f"pid {pid} to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


class Sandbox:
    """Start with start(), always stop with stop() (idempotent)."""

    uri = URI

    def __init__(self, log_dir: Path, cache_dir: Path = paths.LIBVIRT_CACHE,
                 bridge: Bridge | None = None) -> None:
        self.log_dir = log_dir
        self.cache_dir = cache_dir
        self.bridge = bridge or Bridge()
        self.console_dir = LOG_DIR / "console"
        self._pids: dict[str, int] = {}
        self._host_files: dict[str, str] = {}

    # ---------------------------------------------------------------- start/stop
    def start(self) -> None:
        if not namespace.inside():
            raise RuntimeError(
                "the sandbox only runs inside its namespaces: "
                "tests/e2e/run or scripts/demo (see docs/e2e.md)"
            )
        # Read through a non-recursive bind mount of /, as host_changes() reads them:
        # inside another sandbox (the demo's smoke test runs inside the e2e suite's)
        # "/etc/libvirt" is that sandbox's tmpfs, not the host's.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with hostcheck.host_root(self.log_dir) as root:
            self._host_files = hostcheck.snapshot(root)
        self._mount_private_dirs()
        self._provide_accounts()
        self._write_config()
        self._setup_network()
        self._start_daemon("virtlogd", ["virtlogd", "-d", "-p", "/run/libvirt/virtlogd.pid"])
        self.start_libvirtd()

    def stop(self) -> None:
        """Stop QEMU, libvirtd and virtlogd; whatever survives dies with the namespace."""
        self._destroy_all_domains()
        self.stop_libvirtd()
        self._stop_daemon("virtlogd")

    def host_changes(self) -> list[str]:
        """What changed in the host's /etc/libvirt, /etc/passwd and /etc/group since
        start() (an empty list, or the sandbox leaked)."""
        if not self._host_files:
            return []  # start() failed before mounting anything
        with hostcheck.host_root(Path("/run/vmhealth")) as root:
            return hostcheck.differences(self._host_files, hostcheck.snapshot(root))

    # ---------------------------------------------------------------- libvirtd
    def start_libvirtd(self, timeout: float = 120) -> None:
        # The first start on a machine probes QEMU's capabilities (tens of seconds
        # under TCG on a busy machine); later starts reuse the cache.
        self._start_daemon("libvirtd", ["libvirtd", "-d", "-p", "/run/libvirt/libvirtd.pid"])
        wait_until(self._libvirtd_answers, timeout=timeout, what="libvirtd's socket")

    def stop_libvirtd(self) -> None:
        self._stop_daemon("libvirtd")

    def restart_libvirtd(self, max_client_requests: int | None = None) -> None:
        """Stop and start libvirtd; running domains keep running (for reconnect tests).
        max_client_requests: libvirtd.conf's limit of calls served at once per client
        connection from now on (None: libvirtd's default, 5)."""
        self.stop_libvirtd()
        self._write_libvirtd_conf(max_client_requests)
        self.start_libvirtd()

    def reload_libvirtd(self) -> None:
        """SIGHUP: libvirtd re-reads which hooks exist (they are cached at start)."""
        os.kill(self._pids["libvirtd"], signal.SIGHUP)

    def install_hook(self, source: Path, name: str | None = None, reload: bool = True) -> Path:
        """Copy an executable into /etc/libvirt/hooks/qemu.d/ (the sandbox's own)."""
        HOOK_DIR.mkdir(parents=True, exist_ok=True)
        target = HOOK_DIR / (name or source.name)
        shutil.copyfile(source, target)
        target.chmod(0o755)
        if reload and "libvirtd" in self._pids:
            self.reload_libvirtd()
        return target

    def remove_hook(self, name: str, reload: bool = True) -> None:
        (HOOK_DIR / name).unlink(missing_ok=True)
        if reload and "libvirtd" in self._pids:
            self.reload_libvirtd()

    def _libvirtd_answers(self) -> bool:
        pid = self._pids["libvirtd"]
        if not pid_alive(pid):
            raise GiveUp(f"libvirtd exited; see {self.log_dir / 'libvirtd.log'}")
        if not SOCKET.exists():
            return False
        # A client call proves the daemon accepts connections, not just that the
        # socket file exists.
        result = subprocess.run(
            ["virsh", "-c", self.uri, "version"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        return result.returncode == 0

    # ---------------------------------------------------------------- internals
    def _mount_private_dirs(self) -> None:
        for path in PRIVATE_DIRS:
            mount_tmpfs(path)
        # Logs go to a directory on the host's disk (under build/) so they outlive
        # the namespace; the host's /var/log/libvirt is hidden, not written.
        self.log_dir.mkdir(parents=True, exist_ok=True)
        bind(self.log_dir, LOG_DIR)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        bind(self.cache_dir, CACHE_DIR)
        self.console_dir.mkdir(parents=True, exist_ok=True)
        HOOK_DIR.mkdir(parents=True, exist_ok=True)
        # libvirt's sysfs lookups (/sys/class/net/BRIDGE) must see this network
        # namespace's devices, and a fresh sysfs also hides the host's cgroup tree.
        run(["mount", "-t", "sysfs", "sysfs", "/sys"])

    def _provide_accounts(self) -> None:
        """Make libvirt-qemu and kvm exist, without touching the host's account files.

        libvirt's QEMU driver resolves its compiled-in user (Debian: libvirt-qemu)
        before it reads qemu.conf, and that account only comes with
        libvirt-daemon-system.  Missing entries go into private copies of
        /etc/passwd and /etc/group, bind-mounted over the originals in this mount
        namespace only.
        """
        wanted = {
            "/etc/group": [("kvm", "kvm:x:64054:\n"), ("libvirt-qemu", "libvirt-qemu:x:64055:\n")],
            "/etc/passwd": [(
                "libvirt-qemu",
                "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n",
            )],
        }
        private = ACCOUNTS_DIR
        private.mkdir(parents=True, exist_ok=True)
        for original, entries in wanted.items():
            text = Path(original).read_text()
            names = {line.split(":", 1)[0] for line in text.splitlines()}
            missing = [line for name, line in entries if name not in names]
            if not missing:
                continue
            if not text.endswith("\n"):
                text += "\n"
            copy = private / Path(original).name
            copy.write_text(text + "".join(missing))
            run(["mount", "--bind", str(copy), original])

    def _write_config(self) -> None:
        Path("/etc/libvirt/qemu.conf").write_text(QEMU_CONF)
        self._write_libvirtd_conf()

    def _write_libvirtd_conf(self, max_client_requests: int | None = None) -> None:
        text = LIBVIRTD_CONF
        if max_client_requests is not None:
            text += f"max_client_requests = {int(max_client_requests)}\n"
        Path("/etc/libvirt/libvirtd.conf").write_text(text)

    def _setup_network(self) -> None:
        br = self.bridge
        run(["ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", br.name, "type", "bridge"])
        run(["ip", "addr", "add", f"{br.ipv4}/{br.prefix4}", "dev", br.name])
        # nodad: the address is usable at once instead of after duplicate detection.
        run(["ip", "-6", "addr", "add", f"{br.ipv6}/{br.prefix6}", "dev", br.name, "nodad"])
        run(["ip", "link", "set", br.name, "up"])

    def _start_daemon(self, name: str, argv: list[str]) -> None:
        self._pids[name] = start_daemon(argv)

    def _stop_daemon(self, name: str, timeout: float = 15) -> None:
        pid = self._pids.pop(name, None)
        if pid is not None:
            stop_pid(pid, timeout)

    def _destroy_all_domains(self) -> None:
        if "libvirtd" not in self._pids:
            return
        # virsh, not the Python binding: this runs during teardown, when the test's
        # own connection may be broken.
        listing = subprocess.run(
            ["virsh", "-c", self.uri, "list", "--name"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        for name in listing.stdout.split():
            subprocess.run(
                ["virsh", "-c", self.uri, "destroy", name],
                capture_output=True,
                timeout=20,
                check=False,
            )
