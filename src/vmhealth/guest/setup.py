"""`vmhealth guest setup` and `guest check`: the guest plan applied to a root directory.

Each step knows how to tell what is missing (`missing`) and how to fix it (`apply`,
returning what it changed in words). Setup runs every step whose `missing` is not
empty; a second run finds nothing missing and changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from vmhealth.guest import edits
from vmhealth.guest.distro import Family
from vmhealth.guest.plan import (
    AGENT_CHANNEL,
    AGENT_UNIT,
    MASKED_UNITS_DIR,
    POLICY_MODULE,
    POLICY_PACKAGE_PATH,
    WATCHDOG_DEVICE,
    WATCHDOG_UNIT,
    GuestPlan,
    Label,
)
from vmhealth.guest.system import CommandFailed, GuestSystem

# A file each package installs: presence means installed, in any root (also in
# fixture trees of distros whose package database this host cannot read).
PACKAGE_FILES = {
    "qemu-guest-agent": ("/usr/bin/qemu-ga", "/usr/sbin/qemu-ga"),
    "watchdog": ("/usr/sbin/watchdog",),
    "policycoreutils-python-utils": ("/usr/sbin/semanage",),
}
AGENT_ENV_FILE = "/etc/sysconfig/qemu-ga"
AGENT_CONF_FILE = "/etc/qemu/qemu-ga.conf"
WATCHDOG_CONF = "/etc/watchdog.conf"
DEBIAN_WATCHDOG_DEFAULT = "/etc/default/watchdog"
FILE_CONTEXTS_LOCAL = "/etc/selinux/{policy}/contexts/files/file_contexts.local"
SELINUX_CONFIG = "/etc/selinux/config"


@dataclass
class Step:
    title: str
    missing: Callable[[GuestSystem], list[str]]
    apply: Callable[[GuestSystem], list[str]]


@dataclass
class StepReport:
    title: str
    missing: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------

def _package_installed(system: GuestSystem, package: str) -> bool:
    return any(system.path(path).exists() for path in PACKAGE_FILES.get(package, ()))


def _packages_step(plan: GuestPlan) -> Step:
    def missing(system: GuestSystem) -> list[str]:
        return [f"package {name} is not installed" for name in plan.packages
                if not _package_installed(system, name)]

    def apply(system: GuestSystem) -> list[str]:
        wanted = [name for name in plan.packages if not _package_installed(system, name)]
        if plan.distro.family is Family.DEBIAN:
            argv = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
            env = {"DEBIAN_FRONTEND": "noninteractive"}
        else:
            argv, env = ["dnf", "install", "-y", *wanted], None
        guarded = system.forbid_service_starts()
        try:
            system.run(argv, env=env)
        finally:
            if guarded:
                system.allow_service_starts()
        return [f"installed {', '.join(wanted)}"]

    return Step("packages: " + ", ".join(plan.packages), missing, apply)


def _file_step(title: str, path: str, editor, *, create: bool = False) -> Step:
    def missing(system: GuestSystem) -> list[str]:
        text = edits.read_text(str(system.path(path)))
        if text is None:
            return [f"{path} does not exist"] if create else []
        return editor(text)[1]

    def apply(system: GuestSystem) -> list[str]:
        return edits.edit_file(str(system.root), path, editor, create=create)

    return Step(title, missing, apply)


def _agent_restart_step() -> Step:
    """Restart the agent when its filter files are newer than the running agent."""
    def missing(system: GuestSystem) -> list[str]:
        processes = system.processes()
        if processes is None:
            return []  # offline root: it starts with the new settings
        for process in processes:
            if process.name == "qemu-ga":
                reasons = edits.exec_blocks_in_args(list(process.cmdline[1:]))
                if reasons:
                    return [reason + "; restart it" for reason in reasons]
        return []

    def apply(system: GuestSystem) -> list[str]:
        system.run(["systemctl", "restart", AGENT_UNIT])
        return [f"restarted {AGENT_UNIT}"]

    return Step("agent restarted with guest-exec allowed", missing, apply)


def _watchdog_restart_step(settings_files: tuple[str, ...]) -> Step:
    """Restart the watchdog daemon when it started before its settings last changed.

    Debian's package starts the daemon at install, with the stock files (no
    watchdog-device): left running, it feeds nothing and the i6300esb is never armed
    until the next boot. Stop then start: the start also replaces a wd_keepalive the
    package started (Conflicts=); the mask step keeps it from starting again."""
    def missing(system: GuestSystem) -> list[str]:
        processes = system.processes()
        if processes is None:
            return []  # offline root: it starts with the new settings
        changed = [system.path(path).stat().st_mtime for path in settings_files
                   if system.path(path).exists()]
        if not changed:
            return []
        if any(process.name == "watchdog" and process.started < max(changed)
               for process in processes):
            return ["the watchdog daemon runs with settings older than "
                    f"{', '.join(settings_files)}; restart it"]
        return []

    def apply(system: GuestSystem) -> list[str]:
        system.run(["systemctl", "stop", WATCHDOG_UNIT])
        system.run(["systemctl", "start", WATCHDOG_UNIT])
        return [f"restarted {WATCHDOG_UNIT}"]

    return Step("watchdog daemon runs with the current settings", missing, apply)


def _mask_missing(system: GuestSystem, unit: str) -> list[str]:
    link = system.path(f"{MASKED_UNITS_DIR}/{unit}")
    if link.is_symlink() and os.readlink(link) == os.devnull:
        return []
    return [f"{unit} is not masked: a crashed watchdog daemon would be replaced by it "
            "(OnFailure=), and it would feed the device on"]


def _mask_step(unit: str) -> Step:
    """Mask a unit (a symlink to /dev/null in /etc/systemd/system). A drop-in cannot
    remove it from watchdog.service's OnFailure=: systemd.unit(5) says dependencies
    cannot be reset to an empty list."""
    def apply(system: GuestSystem) -> list[str]:
        if system.live:
            system.run(["systemctl", "mask", unit])  # reloads systemd itself
        else:
            link = system.path(f"{MASKED_UNITS_DIR}/{unit}")
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()  # a local copy of the unit: the mask replaces it
            link.symlink_to(os.devnull)
        return [f"masked {unit}"]

    return Step(f"{unit} masked", lambda system: _mask_missing(system, unit), apply)


def _service_step(unit: str) -> Step:
    def missing(system: GuestSystem) -> list[str]:
        if system.unit_file(unit) is None:
            return [f"unit {unit} is not installed"]
        if system.unit_enabled(unit) is False:
            return [f"{unit} is not enabled"]
        return []

    def apply(system: GuestSystem) -> list[str]:
        if system.live:
            system.run(["systemctl", "enable", "--now", unit])
            return [f"enabled and started {unit}"]
        return system.enable_unit_offline(unit) or [
            f"{unit} is static (started by udev); nothing to enable"]

    return Step(f"service {unit} enabled", missing, apply)


def selinux_policy(system: GuestSystem) -> str | None:
    """The loaded policy name ('targeted') when SELinux is enabled in the root, else None."""
    text = edits.read_text(str(system.path(SELINUX_CONFIG)))
    if text is None:
        return None
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.lstrip().startswith("#"))
    if settings.get("SELINUX", "disabled").strip() == "disabled":
        return None
    return settings.get("SELINUXTYPE", "targeted").strip()


def _local_rules(system: GuestSystem, policy: str) -> str:
    path = system.path(FILE_CONTEXTS_LOCAL.format(policy=policy))
    return edits.read_text(str(path)) or ""


def _label_step(label: Label) -> Step:
    """semanage fcontext (persistent, survives relabels) + restorecon (now)."""
    def missing(system: GuestSystem) -> list[str]:
        policy = selinux_policy(system)
        if policy is None:
            return []
        for line in _local_rules(system, policy).splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == label.fcontext_regex and \
                    f":{label.selinux_type}:" in words[-1]:
                return []
        return [f"no persistent SELinux rule labelling {label.path} {label.selinux_type}"]

    def apply(system: GuestSystem) -> list[str]:
        regex = label.fcontext_regex
        try:
            system.run(["semanage", "fcontext", "-a", "-t", label.selinux_type, regex])
        except CommandFailed:  # a rule for this path exists with another type
            system.run(["semanage", "fcontext", "-m", "-t", label.selinux_type, regex])
        changes = [f"semanage fcontext: {regex} -> {label.selinux_type} ({label.why})"]
        if system.path(label.path).exists():
            system.run(["restorecon", "-R", label.path])
            changes.append(f"restorecon {label.path}")
        return changes

    return Step(f"SELinux label {label.selinux_type} on {label.path}", missing, apply)


def _policy_module_step() -> Step:
    def missing(system: GuestSystem) -> list[str]:
        policy = selinux_policy(system)
        if policy is None:
            return []
        store = system.path(f"/var/lib/selinux/{policy}/active/modules/400/{POLICY_MODULE}")
        return [] if store.exists() else [f"SELinux module {POLICY_MODULE} is not installed"]

    def apply(system: GuestSystem) -> list[str]:
        if not system.path(POLICY_PACKAGE_PATH).exists():
            raise CommandFailed(f"{POLICY_PACKAGE_PATH} is missing: install the vmhealth-guest "
                                "package (or build guest/selinux with checkmodule)")
        system.run(["semodule", "-X", "400", "-i", POLICY_PACKAGE_PATH])
        return [f"installed SELinux module {POLICY_MODULE}"]

    return Step(f"SELinux module {POLICY_MODULE}", missing, apply)


def build_steps(plan: GuestPlan) -> list[Step]:
    steps = [_packages_step(plan)]
    if plan.open_exec and plan.distro.agent_environment_file:
        steps.append(_file_step("agent RPC filter allows guest-exec (" +
                                plan.distro.rpc_filter.value + ")", AGENT_ENV_FILE,
                                lambda text: edits.open_exec_in_env(text, AGENT_ENV_FILE)))
        steps.append(_file_step("qemu-ga.conf allows guest-exec", AGENT_CONF_FILE,
                                lambda text: edits.open_exec_in_conf(text, AGENT_CONF_FILE)))
    steps.append(_service_step(AGENT_UNIT))
    if plan.open_exec:
        steps.append(_agent_restart_step())
    if plan.watchdog is not None:
        settings = plan.watchdog
        steps.append(_file_step(
            f"watchdog daemon feeds {WATCHDOG_DEVICE} (timeout {settings.timeout} s, "
            f"interval {settings.interval} s)", WATCHDOG_CONF,
            lambda text: edits.edit_watchdog_conf(text, settings.timeout, settings.interval,
                                                  path=WATCHDOG_CONF), create=True))
        if plan.distro.family is Family.DEBIAN:
            steps.append(_file_step(
                f"Debian watchdog defaults (run_watchdog=1, module {settings.module})",
                DEBIAN_WATCHDOG_DEFAULT,
                lambda text: edits.edit_debian_default(text, settings.module,
                                                       path=DEBIAN_WATCHDOG_DEFAULT),
                create=True))
        steps.extend(_mask_step(unit) for unit in plan.masked_units)
        steps.append(_service_step(WATCHDOG_UNIT))
        settings_files = (WATCHDOG_CONF, DEBIAN_WATCHDOG_DEFAULT) \
            if plan.distro.family is Family.DEBIAN else (WATCHDOG_CONF,)
        steps.append(_watchdog_restart_step(settings_files))
    if plan.needs_policy_module:
        steps.append(_policy_module_step())
    steps.extend(_label_step(label) for label in plan.labels)
    return steps


# ---------------------------------------------------------------------------
# Appliers
# ---------------------------------------------------------------------------

def run_setup(plan: GuestPlan, system: GuestSystem, *, dry_run: bool = False
              ) -> list[StepReport]:
    reports = []
    for step in build_steps(plan):
        report = StepReport(step.title)
        reports.append(report)
        try:
            report.missing = step.missing(system)
            if report.missing and not dry_run:
                report.changes = step.apply(system)
        except (CommandFailed, OSError) as exc:
            report.error = str(exc)
    return reports


@dataclass
class CheckItem:
    name: str
    ok: bool | None  # None: cannot be known here (offline root)
    detail: str


def _running(system: GuestSystem, names: tuple[str, ...]):
    processes = system.processes()
    if processes is None:
        return None
    return [p for p in processes if p.name in names or
            (p.name == "busybox" and len(p.cmdline) > 1 and p.cmdline[1] in names)]


def run_check(plan: GuestPlan, system: GuestSystem) -> list[CheckItem]:
    """What the guest still lacks for the plan, as a list of named findings."""
    items = []
    agents = _running(system, ("qemu-ga",))
    if agents is None:
        items.append(CheckItem("agent running", None, "offline root: not checked"))
    else:
        items.append(CheckItem("agent running", bool(agents),
                               "qemu-ga is running" if agents else "no qemu-ga process"))
    channel = system.path(AGENT_CHANNEL)
    items.append(CheckItem("agent channel", channel.exists(),
                           f"{AGENT_CHANNEL} {'present' if channel.exists() else 'missing'}"
                           " (the domain needs a <channel> org.qemu.guest_agent.0)"))
    if plan.open_exec:
        reasons = []
        for path, finder in ((AGENT_ENV_FILE, edits.exec_blocks_in_env),
                             (AGENT_CONF_FILE, edits.exec_blocks_in_conf)):
            text = edits.read_text(str(system.path(path)))
            reasons += finder(text, path) if text is not None else []
        for agent in agents or []:
            reasons += edits.exec_blocks_in_args(list(agent.cmdline[1:]))
        items.append(CheckItem("guest-exec allowed", not reasons,
                               "; ".join(reasons) or "no filter blocks guest-exec"))
    if plan.watchdog is not None:
        device = system.path(WATCHDOG_DEVICE)
        items.append(CheckItem("watchdog device", device.exists(),
                               f"{WATCHDOG_DEVICE} {'present' if device.exists() else 'missing'}"))
        conf = edits.read_text(str(system.path(WATCHDOG_CONF))) or ""
        conf_missing = edits.edit_watchdog_conf(conf, plan.watchdog.timeout,
                                                plan.watchdog.interval)[1]
        feeders = _running(system, ("watchdog",))
        if feeders is None:
            ok = not conf_missing
            detail = "; ".join(conf_missing) or f"{WATCHDOG_CONF} feeds {WATCHDOG_DEVICE}"
            items.append(CheckItem("watchdog daemon feeding", ok if not ok else None,
                                   detail + " (offline root: daemon not checked)"))
        else:
            busybox = [p for p in feeders if p.name == "busybox" or WATCHDOG_DEVICE in p.cmdline]
            ok = bool(busybox) or (bool(feeders) and not conf_missing)
            detail = ("no watchdog process" if not feeders else
                      "; ".join(conf_missing) or "watchdog daemon running")
            items.append(CheckItem("watchdog daemon feeding", ok, detail))
        for unit in plan.masked_units:
            found = _mask_missing(system, unit)
            items.append(CheckItem(f"{unit} masked", not found, "; ".join(found) or
                                   f"{MASKED_UNITS_DIR}/{unit} -> {os.devnull}"))
    for step in build_steps(plan):
        if step.title.startswith("SELinux"):
            found = step.missing(system)
            items.append(CheckItem(step.title, not found, "; ".join(found) or "in place"))
            if not found and system.live:
                items.extend(_label_now(system, label) for label in plan.labels
                             if step.title.endswith(label.path))
    return items


def _label_now(system: GuestSystem, label: Label) -> CheckItem:
    """The label the file carries right now (restorecon may not have run since)."""
    try:
        raw = os.getxattr(system.path(label.path), "security.selinux")
    except OSError as exc:
        return CheckItem(f"current label of {label.path}", None, f"not readable: {exc}")
    context = raw.rstrip(b"\0").decode(errors="replace")
    ok = f":{label.selinux_type}:" in context
    return CheckItem(f"current label of {label.path}", ok,
                     context + ("" if ok else f"; run restorecon -R {label.path}"))
