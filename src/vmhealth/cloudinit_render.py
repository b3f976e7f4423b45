"""`vmhealth cloudinit render`: the guest plan as #cloud-config user data.

The plan's file edits are not re-expressed in sed: the rendered user data ships
vmhealth/guest/edits.py itself (write_files) and runs it with the guest's Python
(cloud-init is a Python program, so every cloud-init guest has one). A guest prepared
by cloud-init and one prepared by `vmhealth guest setup` get the same edits.

User data a KubeVirt manifest already carries is merged, not replaced: the user's keys
stay as they are, lists vmhealth also needs (packages, runcmd, write_files) get
vmhealth's entries appended after the user's own, so a user's `touch /tmp/healthy.txt`
runs before vmhealth labels the file.
"""

from __future__ import annotations

import inspect
from typing import Any

import yaml

from vmhealth.guest import edits
from vmhealth.guest.distro import Distro, Family
from vmhealth.guest.plan import (
    AGENT_UNIT,
    POLICY_PACKAGE_PATH,
    WATCHDOG_UNIT,
    GuestPlan,
    build_plan,
)
from vmhealth.spec import HealthSpec

HEADER = "#cloud-config"
EDITS_SCRIPT = "/var/lib/vmhealth/guest-edits.py"
# RHEL 8 has no python3 by default, only the platform-python cloud-init runs on.
RUN_PYTHON = 'exec "$(command -v python3 || echo /usr/libexec/platform-python)" "$@"'
# semanage fails on a rule that exists (then modify it); restorecon only what exists.
LABEL_SCRIPT = ('selinuxenabled || exit 0; '
                'semanage fcontext -a -t "$1" "$2" 2>/dev/null || '
                'semanage fcontext -m -t "$1" "$2"; '
                'if [ -e "$3" ]; then restorecon -R "$3"; fi')
MODULE_SCRIPT = 'selinuxenabled || exit 0; semodule -X 400 -i "$1"'


class UserDataError(ValueError):
    """User data that cannot be merged (not #cloud-config, or not a mapping)."""


def parse_user_data(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    first_line = text.lstrip().splitlines()[0].strip()
    if first_line != HEADER:
        raise UserDataError(f"the manifest's user data starts with {first_line[:40]!r}, not "
                            f"{HEADER!r}; vmhealth can merge only cloud-config user data "
                            "(render without the manifest's user data and combine them "
                            "with a MIME multi-part archive)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserDataError(f"the manifest's user data is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserDataError("the manifest's user data must be a YAML mapping")
    return data


def _as_list(value: Any) -> list[Any]:
    """cloud-init accepts `packages: name` in practice (the KubeVirt guide does it)."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _package_name(item: Any) -> Any:
    return item[0] if isinstance(item, list) and item else item


def plan_cloud_config(plan: GuestPlan) -> dict[str, Any]:
    """The keys vmhealth contributes, before merging."""
    debian = plan.distro.family is Family.DEBIAN
    runcmd: list[Any] = []
    edit_args = []
    if plan.open_exec:
        edit_args.append("--open-exec")
    if plan.watchdog is not None:
        edit_args += ["--watchdog-timeout", str(plan.watchdog.timeout),
                      "--watchdog-interval", str(plan.watchdog.interval)]
        if debian:
            edit_args += ["--debian-module", plan.watchdog.module]
    write_files = []
    if edit_args:
        write_files.append({
            "path": EDITS_SCRIPT,
            "owner": "root:root",
            "permissions": "0755",
            "defer": True,  # after packages: the stock files exist by then
            "content": inspect.getsource(edits),
        })
        runcmd.append(["sh", "-c", RUN_PYTHON, "sh", EDITS_SCRIPT, *edit_args])
    # Debian's agent unit is static (udev starts it); RHEL/Fedora's can be enabled.
    runcmd.append(["systemctl", "start" if debian else "enable", *([] if debian else
                                                                     ["--now"]), AGENT_UNIT])
    if plan.open_exec and not debian:
        runcmd.append(["systemctl", "restart", AGENT_UNIT])
    if plan.watchdog is not None:
        # Not `enable --now`: Debian's postinst has already started the daemon with the
        # stock files (no watchdog-device), and --now leaves that one running unfed.
        # wd_keepalive is masked first (mask also reloads systemd): Debian's unit starts
        # it on failure (OnFailure=), and it would feed the device for a crashed daemon.
        # Stop, then start: the start also replaces a wd_keepalive the postinst may
        # have started (Conflicts=).
        runcmd += [["systemctl", "mask", unit] for unit in plan.masked_units]
        runcmd += [["systemctl", "enable", WATCHDOG_UNIT],
                   ["systemctl", "stop", WATCHDOG_UNIT],
                   ["systemctl", "start", WATCHDOG_UNIT]]
    if plan.needs_policy_module:
        runcmd.append(["sh", "-c", MODULE_SCRIPT, "sh", POLICY_PACKAGE_PATH])
    for label in plan.labels:
        runcmd.append(["sh", "-c", LABEL_SCRIPT, "sh", label.selinux_type,
                       label.fcontext_regex, label.path])
    config: dict[str, Any] = {"packages": list(plan.packages)}
    if write_files:
        config["write_files"] = write_files
    config["runcmd"] = runcmd
    return config


def merge(user: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    merged = dict(user)
    if "packages" in ours:
        packages = _as_list(user.get("packages"))
        present = {_package_name(item) for item in packages}
        merged["packages"] = packages + [p for p in ours["packages"] if p not in present]
    if "write_files" in ours:
        files = _as_list(user.get("write_files"))
        taken = {item.get("path") for item in files if isinstance(item, dict)}
        for item in ours["write_files"]:
            if item["path"] in taken:
                raise UserDataError(f"the user data already writes {item['path']}, which "
                                    "vmhealth needs for its own script")
        merged["write_files"] = files + ours["write_files"]
    for key in ("bootcmd", "runcmd"):
        if key in ours:
            merged[key] = _as_list(user.get(key)) + ours[key]
    return merged


class _Dumper(yaml.SafeDumper):
    """Block style, and multi-line strings (the shipped script) as readable | blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
    """A command (a list of strings) on one line, as people write runcmd entries."""
    flat = all(isinstance(item, (str, int, bool)) for item in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)


def render(spec: HealthSpec, distro: Distro, *, include_user_data: bool = True) -> str:
    plan = build_plan(spec, distro)
    user = parse_user_data(spec.user_data) if include_user_data else {}
    merged = merge(user, plan_cloud_config(plan))
    notes = [f"# vmhealth guest plan for {distro.describe()}"]
    notes += [f"# note: {note}" for note in plan.notes]
    if plan.needs_policy_module:
        notes.append(f"# note: exec probe programs need the vmhealth_guest SELinux module "
                     f"({POLICY_PACKAGE_PATH}, from the vmhealth-guest package)")
    body = yaml.dump(merged, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)
    return "\n".join([HEADER, *notes, body])
