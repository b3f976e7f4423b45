"""The guest plan: what a guest needs so that a health spec's probes and watchdog work.

One plan, derived from a HealthSpec and the guest's distro, feeds two appliers:
`vmhealth guest setup`/`check` (vmhealth.guest.setup) inside the guest, and
`vmhealth cloudinit render` (vmhealth.cloudinit_render) for cloud-init user data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vmhealth.guest.distro import Distro, Family
from vmhealth.spec import Exec, HealthSpec, WatchdogModel

AGENT_PACKAGE = "qemu-guest-agent"
AGENT_UNIT = "qemu-guest-agent.service"
AGENT_CHANNEL = "/dev/virtio-ports/org.qemu.guest_agent.0"
WATCHDOG_PACKAGE = "watchdog"
WATCHDOG_UNIT = "watchdog.service"
WATCHDOG_DEVICE = "/dev/watchdog"
# Debian's watchdog.service has OnFailure=wd_keepalive.service: a crashed or killed
# daemon would be replaced by wd_keepalive, which feeds the device on, so the watchdog
# never fires. A drop-in cannot clear OnFailure= (systemd.unit(5): dependencies cannot
# be reset to an empty list), so the plan masks the keepalive unit instead.
KEEPALIVE_UNIT = "wd_keepalive.service"
MASKED_UNITS_DIR = "/etc/systemd/system"
SEMANAGE_PACKAGE = "policycoreutils-python-utils"  # Fedora/RHEL: semanage

# Kernel driver per libvirt watchdog model (Debian's /etc/default/watchdog loads it).
WATCHDOG_MODULES = {
    WatchdogModel.I6300ESB: "i6300esb",
    WatchdogModel.IB700: "ib700wdt",
    WatchdogModel.ITCO: "iTCO_wdt",
    WatchdogModel.DIAG288: "diag288_wdt",
}
# The watchdog daemon's own default timeout, used when no liveness probe says more.
DEFAULT_WATCHDOG_TIMEOUT = 60
MIN_WATCHDOG_TIMEOUT = 30  # the i6300esb driver's default heartbeat; lower risks false fires
MAX_WATCHDOG_TIMEOUT = 600  # well inside i6300esb's 1..2046 s range

# SELinux types (fedora-selinux policy): what guest-exec'd commands (virt_qemu_ga_t) can use.
GA_READABLE_TYPE = "virt_qemu_ga_exec_t"  # KubeVirt's documented label for probe files
PROBE_SCRIPT_TYPE = "vmhealth_probe_exec_t"  # ours: guest/selinux/vmhealth_guest.te
POLICY_MODULE = "vmhealth_guest"
POLICY_PACKAGE_PATH = "/usr/share/selinux/packages/vmhealth_guest.pp"
# Commands in these directories are bin_t, which virt_qemu_ga_t may already execute.
SYSTEM_BIN_DIRS = ("/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/", "/usr/libexec/")
# Pseudo file systems have their own labels; never relabel them.
VOLATILE_DIR = "/tmp/"  # noqa: S108 - a path in the guest, named to warn about it
NO_LABEL_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/")


@dataclass(frozen=True)
class WatchdogSettings:
    timeout: int
    interval: int
    module: str


@dataclass(frozen=True)
class Label:
    path: str
    selinux_type: str
    why: str

    @property
    def fcontext_regex(self) -> str:
        """semanage's regular expression for exactly this path (and below, for a dir)."""
        escaped = "".join("\\" + ch if ch in ".^$*+?()[]{}|\\" else ch for ch in self.path)
        return escaped + "(/.*)?"


@dataclass
class GuestPlan:
    distro: Distro
    packages: list[str] = field(default_factory=list)
    open_exec: bool = False
    watchdog: WatchdogSettings | None = None
    labels: list[Label] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def needs_policy_module(self) -> bool:
        return any(label.selinux_type == PROBE_SCRIPT_TYPE for label in self.labels)

    @property
    def masked_units(self) -> list[str]:
        """Units that must never start: Debian's wd_keepalive (see KEEPALIVE_UNIT)."""
        if self.watchdog is not None and self.distro.family is Family.DEBIAN:
            return [KEEPALIVE_UNIT]
        return []

    @property
    def services(self) -> list[str]:
        return [AGENT_UNIT] + ([WATCHDOG_UNIT] if self.watchdog else [])


def exec_commands(spec: HealthSpec) -> list[tuple[str, ...]]:
    return [probe.handler.command for probe in spec.probes().values()
            if isinstance(probe.handler, Exec)]


def watchdog_settings(spec: HealthSpec) -> WatchdogSettings | None:
    """Hardware timeout and feed interval for the guest's watchdog daemon.

    With a liveness probe the guest should be reset by the watchdog no later than
    liveness would notice the hang (periodSeconds x failureThreshold), but never below
    30 s, so a busy (or emulated) guest is not reset for a slow moment. The daemon
    feeds at least six times per timeout: one missed feed never fires it.
    """
    if spec.watchdog is None:
        return None
    timeout = DEFAULT_WATCHDOG_TIMEOUT
    liveness = spec.liveness_probe
    if liveness is not None:
        timeout = liveness.period_seconds * liveness.failure_threshold
    timeout = max(MIN_WATCHDOG_TIMEOUT, min(MAX_WATCHDOG_TIMEOUT, timeout))
    interval = max(1, min(10, timeout // 6))
    return WatchdogSettings(timeout=timeout, interval=interval,
                            module=WATCHDOG_MODULES[spec.watchdog.model])


def probe_labels(commands: list[tuple[str, ...]]) -> list[Label]:
    """Files and commands exec probes use that guest-exec's SELinux domain must reach."""
    labels: dict[str, Label] = {}
    for command in commands:
        program, args = command[0], command[1:]
        if program.startswith("/") and not program.startswith(SYSTEM_BIN_DIRS):
            labels.setdefault(program, Label(program, PROBE_SCRIPT_TYPE,
                                             "a probe program outside the system bin dirs"))
        for arg in args:
            if arg.startswith("/") and not arg.startswith(NO_LABEL_PREFIXES) and \
                    arg not in labels:
                labels[arg] = Label(arg, GA_READABLE_TYPE, "a file an exec probe reads")
    return list(labels.values())


def build_plan(spec: HealthSpec, distro: Distro) -> GuestPlan:
    plan = GuestPlan(distro=distro, packages=[AGENT_PACKAGE])
    commands = exec_commands(spec)
    if commands:
        plan.open_exec = True
        if distro.family is Family.DEBIAN:
            plan.notes.append("Debian/Ubuntu's qemu-guest-agent blocks no RPCs: guest-exec "
                              "works once the agent runs")
        if distro.uses_selinux:
            plan.labels = probe_labels(commands)
            if plan.labels:
                plan.packages.append(SEMANAGE_PACKAGE)
            if any(label.path.startswith(VOLATILE_DIR) for label in plan.labels):
                plan.notes.append("files under /tmp are recreated after a reboot with the "
                                  "default label; keep probe files elsewhere, or run "
                                  "restorecon after creating them")
    plan.watchdog = watchdog_settings(spec)
    if plan.watchdog is not None:
        plan.packages.append(WATCHDOG_PACKAGE)
    return plan


def agent_only_spec() -> HealthSpec:
    """What `guest setup` prepares without --spec: the agent, nothing opened."""
    return HealthSpec()
