"""Distro detection, the plan, and `guest setup`/`check` on fixture roots of each distro."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner
from tests.unit.guest_support import ROOTS, copy_root

from vmhealth.cli import main
from vmhealth.guest import distro, plan, setup
from vmhealth.guest.system import GuestSystem, Process
from vmhealth.spec import parse_spec

SPEC = {
    "readinessProbe": {"exec": {"command": ["cat", "/var/lib/app/healthy.txt"]}},
    "livenessProbe": {"exec": {"command": ["/opt/app/check.sh", "--quick"]},
                      "periodSeconds": 20, "failureThreshold": 3},
    "watchdog": {"model": "i6300esb", "action": "reset"},
}


@pytest.mark.parametrize("name, family, rpc_filter", [
    ("fedora40", "fedora", "QEMU_GA_ARGS"),
    ("rhel8", "rhel", "BLACKLIST_RPC"),
    ("rhel9.2", "rhel", "BLOCK_RPCS"),
    ("rhel9.4", "rhel", "FILTER_RPC_ARGS"),
    ("rhel10", "rhel", "FILTER_RPC_ARGS"),
    ("debian12", "debian", "none"),
])
def test_detect(name, family, rpc_filter):
    found = distro.detect(ROOTS / name)
    assert (found.family.value, found.rpc_filter.value) == (family, rpc_filter)


def test_detect_rebuilds_and_unknown(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID="rocky"\nID_LIKE="rhel centos fedora"\n'
                                             'VERSION_ID="9.3"\n')
    assert distro.detect(tmp_path).rpc_filter is distro.RpcFilter.BLOCK_RPCS
    (tmp_path / "etc/os-release").write_text("ID=arch\n")
    with pytest.raises(distro.DistroError, match="unsupported distribution ID='arch'"):
        distro.detect(tmp_path)


def test_plan_derivation():
    rhel = plan.build_plan(parse_spec(SPEC), distro.detect(ROOTS / "rhel9.4"))
    assert rhel.open_exec
    assert rhel.packages == ["qemu-guest-agent", "policycoreutils-python-utils", "watchdog"]
    assert [(label.path, label.selinux_type) for label in rhel.labels] == [
        ("/var/lib/app/healthy.txt", "virt_qemu_ga_exec_t"),
        ("/opt/app/check.sh", "vmhealth_probe_exec_t")]
    assert rhel.labels[0].fcontext_regex == r"/var/lib/app/healthy\.txt(/.*)?"
    assert rhel.needs_policy_module
    # liveness: 20 s x 3 = 60 s before a hang is noticed; fed six times per timeout
    assert (rhel.watchdog.timeout, rhel.watchdog.interval) == (60, 10)
    debian = plan.build_plan(parse_spec(SPEC), distro.detect(ROOTS / "debian12"))
    assert debian.labels == [] and "policycoreutils-python-utils" not in debian.packages
    bare = plan.build_plan(plan.agent_only_spec(), distro.detect(ROOTS / "rhel8"))
    assert (bare.packages, bare.open_exec, bare.watchdog) == (["qemu-guest-agent"], False, None)


@pytest.mark.parametrize("liveness, timeout, interval", [
    (None, 60, 10), ({"periodSeconds": 1, "failureThreshold": 3}, 30, 5),
    ({"periodSeconds": 100, "failureThreshold": 10}, 600, 10)])
def test_watchdog_timing_bounds(liveness, timeout, interval):
    data = {"watchdog": {}}
    if liveness:
        data["livenessProbe"] = {"guestAgentPing": {}, **liveness}
    settings = plan.watchdog_settings(parse_spec(data))
    assert (settings.timeout, settings.interval) == (timeout, interval)


class FakeSelinuxRunner:
    """Records commands; semanage fcontext -a writes the rule file as semanage does."""

    def __init__(self, root):
        self.root = root
        self.calls = []

    def __call__(self, argv, env):
        self.calls.append(argv)
        command = argv[2:] if argv[0] == "chroot" else argv
        if command[:3] == ["semanage", "fcontext", "-a"]:
            local = self.root / "etc/selinux/targeted/contexts/files/file_contexts.local"
            with local.open("a") as handle:
                handle.write(f"{command[-1]}    system_u:object_r:{command[-2]}:s0\n")
        if command[:2] == ["semodule", "-X"]:
            store = self.root / "var/lib/selinux/targeted/active/modules/400/vmhealth_guest"
            store.mkdir(parents=True)
        return ""


@pytest.mark.parametrize("name", ["fedora40", "rhel8", "rhel9.2", "rhel9.4", "rhel10"])
def test_setup_on_rpm_distros_is_idempotent(name, tmp_path):
    root = copy_root(name, tmp_path)
    (root / "usr/share/selinux/packages").mkdir(parents=True)
    (root / "usr/share/selinux/packages/vmhealth_guest.pp").write_bytes(b"")
    runner = FakeSelinuxRunner(root)
    system = GuestSystem(root, runner=runner)
    the_plan = plan.build_plan(parse_spec(SPEC), distro.detect(root))
    first = setup.run_setup(the_plan, system)
    assert [r.error for r in first if r.error] == []
    assert (root / "etc/systemd/system/multi-user.target.wants/watchdog.service").is_symlink()
    agent_link = (root / "etc/systemd/system" /
                  "dev-virtio\\x2dports-org.qemu.guest_agent.0.device.wants" /
                  "qemu-guest-agent.service")
    assert agent_link.is_symlink()
    assert setup.edits.exec_blocks_in_env((root / "etc/sysconfig/qemu-ga").read_text()) == []
    assert "watchdog-device = /dev/watchdog" in (root / "etc/watchdog.conf").read_text()
    commands = [call[2:] for call in runner.calls]
    assert ["semodule", "-X", "400", "-i", "/usr/share/selinux/packages/vmhealth_guest.pp"] \
        in commands
    assert ["semanage", "fcontext", "-a", "-t", "vmhealth_probe_exec_t",
            r"/opt/app/check\.sh(/.*)?"] in commands
    # no package manager, no systemctl: everything was in place or done offline
    assert not any(c[0] in ("dnf", "systemctl", "apt-get") for c in commands)
    runner.calls.clear()
    second = setup.run_setup(the_plan, system)
    assert [(r.title, r.missing) for r in second if r.missing] == []
    assert runner.calls == []


def test_setup_installs_missing_packages_and_restarts_a_live_agent(tmp_path):
    root = copy_root("rhel9.2", tmp_path)
    (root / "usr/sbin/watchdog").unlink()
    calls = []
    processes = [Process("qemu-ga", ("/usr/bin/qemu-ga", "--block-rpcs=guest-exec"))]
    system = GuestSystem(root, runner=lambda argv, env: calls.append(argv) or "",
                         processes=lambda: processes)
    the_plan = plan.build_plan(parse_spec({"readinessProbe": SPEC["readinessProbe"],
                                           "watchdog": {}}), distro.detect(root))
    reports = {r.title: r for r in setup.run_setup(the_plan, system)}
    assert ["chroot", str(root), "dnf", "install", "-y", "watchdog"] in calls
    restart = reports["agent restarted with guest-exec allowed"]
    assert restart.missing == ["qemu-ga runs with guest-exec blocked (--block-rpcs); "
                               "restart it"]
    assert ["chroot", str(root), "systemctl", "restart", "qemu-guest-agent.service"] in calls


@pytest.mark.parametrize("started_after_edits", [False, True])
def test_a_watchdog_daemon_started_before_the_edits_is_stopped_and_started(
        tmp_path, started_after_edits):
    """Debian's package starts the daemon at install with the stock files: setup edits
    them, then the running daemon must be started again (stop + start: Debian's unit
    hands over to wd_keepalive on stop). A daemon started after the edits is left."""
    root = copy_root("debian12", tmp_path)
    calls = []
    processes = [Process("qemu-ga", ("/usr/sbin/qemu-ga",)),
                 Process("watchdog", ("/usr/sbin/watchdog",), started=time.time() - 3600)]
    system = GuestSystem(root, runner=lambda argv, env: calls.append(argv) or "",
                         processes=lambda: processes)
    the_plan = plan.build_plan(parse_spec({"watchdog": {}}), distro.detect(root))
    if started_after_edits:
        setup.run_setup(the_plan, system)
        calls.clear()
        processes[1] = Process("watchdog", ("/usr/sbin/watchdog",), started=time.time() + 1)
    reports = {r.title: r for r in setup.run_setup(the_plan, system)}
    restart = reports["watchdog daemon runs with the current settings"]
    stop_start = [["chroot", str(root), "systemctl", "stop", "watchdog.service"],
                  ["chroot", str(root), "systemctl", "start", "watchdog.service"]]
    if started_after_edits:
        assert restart.missing == [] and calls == []
    else:
        assert restart.missing and "restart it" in restart.missing[0]
        assert [call for call in calls if "systemctl" in call] == stop_start


def test_check_reports_each_missing_item(tmp_path):
    root = copy_root("rhel9.2", tmp_path)
    processes = [Process("qemu-ga", ("qemu-ga", "--block-rpcs=guest-exec,guest-exec-status"))]
    system = GuestSystem(root, processes=lambda: processes)
    the_plan = plan.build_plan(parse_spec(SPEC), distro.detect(root))
    items = {item.name: item for item in setup.run_check(the_plan, system)}
    assert items["agent running"].ok is True
    assert items["agent channel"].ok is False
    assert items["guest-exec allowed"].ok is False
    assert "BLOCK_RPCS" in items["guest-exec allowed"].detail
    assert "qemu-ga runs with guest-exec blocked" in items["guest-exec allowed"].detail
    assert items["watchdog device"].ok is False
    assert items["watchdog daemon feeding"].ok is False
    (root / "dev/virtio-ports").mkdir(parents=True)
    (root / "dev/virtio-ports/org.qemu.guest_agent.0").touch()
    (root / "dev/watchdog").touch()
    processes[:] = [Process("qemu-ga", ("qemu-ga",)),
                    Process("busybox", ("busybox", "watchdog", "-t", "2", "/dev/watchdog"))]
    (root / "etc/sysconfig/qemu-ga").write_text("BLOCK_RPCS=\n")
    items = {item.name: item for item in setup.run_check(the_plan, system)}
    assert all(items[name].ok for name in ("agent running", "agent channel",
                                           "guest-exec allowed", "watchdog device",
                                           "watchdog daemon feeding"))


def test_cli_setup_dry_run_then_setup_then_nothing_changed(tmp_path):
    root = copy_root("debian12", tmp_path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("readinessProbe:\n  exec:\n    command: [cat, /tmp/x]\n"
                         "watchdog: {}\n")
    runner = CliRunner()
    args = ["guest", "setup", "--spec", str(spec_file), "--root", str(root)]
    dry = runner.invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "family debian" in dry.output and "would   watchdog daemon feeds" in dry.output
    assert "#watchdog-device" in (root / "etc/watchdog.conf").read_text()
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "changed Debian watchdog defaults" in first.output
    second = runner.invoke(main, args)
    assert second.exit_code == 0
    assert "nothing changed: the guest already matches the plan" in second.output
    assert "changed" not in second.output.replace("nothing changed", "")
    check = runner.invoke(main, ["guest", "check", "--spec", str(spec_file), "--root",
                                 str(root)])
    assert check.exit_code == 1
    assert "MISSING agent channel" in check.output and "ok      guest-exec allowed" in \
        check.output


def test_cli_bad_spec_names_the_field(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("readinessProbe:\n  exec: {}\n")
    result = CliRunner().invoke(main, ["guest", "setup", "--spec", str(spec_file), "--root",
                                       str(ROOTS / "debian12"), "--dry-run"])
    assert result.exit_code == 2
    assert "readinessProbe.exec.command" in result.output


def test_debian_setup_masks_wd_keepalive_offline(tmp_path):
    """Debian's watchdog.service has OnFailure=wd_keepalive.service: masked, so a killed
    daemon leaves the device unfed. Offline: the /dev/null link is written directly."""
    root = copy_root("debian12", tmp_path)
    stock = (root / "lib/systemd/system/watchdog.service").read_text()
    assert "OnFailure=wd_keepalive.service" in stock
    system = GuestSystem(root, runner=lambda argv, env: "")
    the_plan = plan.build_plan(parse_spec({"watchdog": {}}), distro.detect(root))
    assert the_plan.masked_units == ["wd_keepalive.service"]
    reports = {r.title: r for r in setup.run_setup(the_plan, system)}
    masked = reports["wd_keepalive.service masked"]
    assert masked.missing and "OnFailure=" in masked.missing[0]
    assert masked.changes == ["masked wd_keepalive.service"] and masked.error is None
    link = root / "etc/systemd/system/wd_keepalive.service"
    assert link.is_symlink() and str(link.readlink()) == "/dev/null"
    assert "run_wd_keepalive=0\n" in (root / "etc/default/watchdog").read_text()
    again = {r.title: r for r in setup.run_setup(the_plan, system)}
    assert again["wd_keepalive.service masked"].missing == []
    # A local copy of the unit in /etc is replaced by the mask, not left to run.
    link.unlink()
    link.write_text("[Service]\nExecStart=/usr/sbin/wd_keepalive\n")
    setup.run_setup(the_plan, system)
    assert link.is_symlink() and str(link.readlink()) == "/dev/null"


def test_live_setup_masks_with_systemctl_and_check_reports_it(tmp_path):
    root = copy_root("debian12", tmp_path)
    calls = []
    system = GuestSystem(root, runner=lambda argv, env: calls.append(argv) or "",
                         processes=lambda: [Process("watchdog", ("/usr/sbin/watchdog",),
                                                    started=time.time() + 60)])
    the_plan = plan.build_plan(parse_spec({"watchdog": {}}), distro.detect(root))
    items = {item.name: item for item in setup.run_check(the_plan, system)}
    assert items["wd_keepalive.service masked"].ok is False
    assert "not masked" in items["wd_keepalive.service masked"].detail
    system.live = True  # as on "/": systemctl, not a hand-made link
    setup.run_setup(the_plan, system)
    assert ["systemctl", "mask", "wd_keepalive.service"] in calls
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/system/wd_keepalive.service").symlink_to("/dev/null")
    items = {item.name: item for item in setup.run_check(the_plan, system)}
    assert items["wd_keepalive.service masked"].ok is True


@pytest.mark.parametrize("name", ["fedora40", "rhel9.4"])
def test_rpm_distros_mask_nothing(name, tmp_path):
    root = copy_root(name, tmp_path)
    the_plan = plan.build_plan(parse_spec({"watchdog": {}}), distro.detect(root))
    assert the_plan.masked_units == []
    assert not [s for s in setup.build_steps(the_plan) if "masked" in s.title]
