"""Rendered user data: merged with the seeds' own, valid under the real `cloud-init schema`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tests.ci import in_ci, require_tool
from tests.unit.guest_support import KUBEVIRT, REPO

from vmhealth.cli import main
from vmhealth.cloudinit_render import EDITS_SCRIPT, UserDataError, parse_user_data, render
from vmhealth.guest import edits
from vmhealth.guest.distro import RENDER_TARGETS
from vmhealth.manifest import load_manifest

SEEDS = sorted(KUBEVIRT.glob("*.yaml"))
EXAMPLES = REPO / "cloudinit"


def _schema_check(path: Path) -> None:
    tool = require_tool("cloud-init")
    done = subprocess.run([tool, "schema", "-c", str(path), "--annotate"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


@pytest.mark.parametrize("distro", sorted(RENDER_TARGETS))
@pytest.mark.parametrize("seed", SEEDS, ids=lambda p: p.stem)
def test_every_seed_renders_valid_cloud_config(seed, distro, tmp_path):
    spec = load_manifest(seed).spec
    text = render(spec, RENDER_TARGETS[distro])
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    user = parse_user_data(spec.user_data)
    for key, value in user.items():  # the user's keys survive
        if key not in ("packages", "runcmd", "bootcmd", "write_files"):
            assert data[key] == value
    for key in ("runcmd", "bootcmd"):  # the user's commands first, in order
        mine = user.get(key) or []
        assert data.get(key, [])[:len(mine)] == mine
    assert "qemu-guest-agent" in data["packages"]
    assert data["packages"].count("qemu-guest-agent") == 1
    path = tmp_path / "user-data"
    path.write_text(text)
    _schema_check(path)


def test_exec_seed_on_rhel_labels_persistently_after_the_users_touch():
    spec = load_manifest(KUBEVIRT / "000-5-virtualmachineinstance.yaml").spec
    data = yaml.safe_load(render(spec, RENDER_TARGETS["rhel9"]))
    runcmd = data["runcmd"]
    touch = runcmd.index(["touch", "/tmp/healthy.txt"])
    label = next(i for i, cmd in enumerate(runcmd) if cmd[:2] == ["sh", "-c"] and
                 "semanage fcontext" in cmd[2])
    assert label > touch
    assert runcmd[label][-2:] == [r"/tmp/healthy\.txt(/.*)?", "/tmp/healthy.txt"]
    assert data["packages"][:1] == ["qemu-guest-agent"]  # the seed's string became a list
    assert "policycoreutils-python-utils" in data["packages"]
    script = next(f for f in data["write_files"] if f["path"] == EDITS_SCRIPT)
    assert script["content"] == Path(edits.__file__).read_text()  # the very same edits
    assert ["systemctl", "restart", "qemu-guest-agent.service"] in runcmd


def test_shipped_script_runs_as_cloud_init_would(tmp_path):
    """The write_files script, run with its runcmd arguments, edits a RHEL 9.2 root."""
    spec = load_manifest(EXAMPLES / "example-vmi.yaml").spec
    data = yaml.safe_load(render(spec, RENDER_TARGETS["rhel9"]))
    script = tmp_path / "guest-edits.py"
    script.write_text(next(f for f in data["write_files"])["content"])
    command = next(cmd for cmd in data["runcmd"] if EDITS_SCRIPT in cmd)
    args = command[command.index(EDITS_SCRIPT) + 1:]
    root = tmp_path / "root"
    (root / "etc/sysconfig").mkdir(parents=True)
    stock = (REPO / "tests/data/guest/roots/rhel9.2/etc/sysconfig/qemu-ga").read_text()
    (root / "etc/sysconfig/qemu-ga").write_text(stock)
    done = subprocess.run(["python3", str(script), "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "BLOCK_RPCS: removed guest-exec" in done.stdout
    assert edits.exec_blocks_in_env((root / "etc/sysconfig/qemu-ga").read_text()) == []
    assert "watchdog-timeout = 60" in (root / "etc/watchdog.conf").read_text()


@pytest.mark.parametrize("distro", sorted(RENDER_TARGETS))
def test_watchdog_daemon_restarts_after_the_edits(distro):
    """A package's postinst may start the daemon before the edits (Debian's does, with
    no watchdog-device): it must be stopped and started again once they are written."""
    spec = load_manifest(EXAMPLES / "example-vmi.yaml").spec
    runcmd = yaml.safe_load(render(spec, RENDER_TARGETS[distro]))["runcmd"]
    edit = next(i for i, cmd in enumerate(runcmd) if EDITS_SCRIPT in cmd)
    stop = runcmd.index(["systemctl", "stop", "watchdog.service"])
    start = runcmd.index(["systemctl", "start", "watchdog.service"])
    assert edit < stop < start
    assert ["systemctl", "enable", "watchdog.service"] in runcmd
    assert not [cmd for cmd in runcmd if "--now" in cmd and "watchdog.service" in cmd]


@pytest.mark.parametrize("distro", sorted(RENDER_TARGETS))
def test_debian_masks_wd_keepalive_before_the_daemon_starts(distro):
    """Debian's watchdog.service has OnFailure=wd_keepalive.service, which a drop-in
    cannot clear: the keepalive is masked before the daemon is (re)started, so a killed
    daemon leaves the device unfed. Other distros' units have no such hand-over."""
    spec = load_manifest(EXAMPLES / "example-vmi.yaml").spec
    runcmd = yaml.safe_load(render(spec, RENDER_TARGETS[distro]))["runcmd"]
    mask = ["systemctl", "mask", "wd_keepalive.service"]
    if distro != "debian":
        assert mask not in runcmd
        return
    edit = next(i for i, cmd in enumerate(runcmd) if EDITS_SCRIPT in cmd)
    assert edit < runcmd.index(mask) < runcmd.index(["systemctl", "stop", "watchdog.service"])
    command = runcmd[edit]
    assert command[command.index("--debian-module") + 1] == "i6300esb"


def test_non_cloud_config_user_data_is_refused():
    with pytest.raises(UserDataError, match="not '#cloud-config'"):
        parse_user_data("#!/bin/sh\necho hi\n")


@pytest.mark.parametrize("distro", sorted(RENDER_TARGETS))
def test_examples_are_in_sync_and_valid(distro):
    spec = load_manifest(EXAMPLES / "example-vmi.yaml").spec
    text = render(spec, RENDER_TARGETS[distro])
    path = EXAMPLES / f"{distro}.user-data"
    if os.environ.get("VMHEALTH_REGENERATE") == "1" and not in_ci():
        path.write_text(text)
    assert path.exists(), f"{path} is missing; regenerate with VMHEALTH_REGENERATE=1"
    assert path.read_text() == text, f"{path} is stale; regenerate with VMHEALTH_REGENERATE=1"
    _schema_check(path)


def test_cli_render_needs_a_source_and_a_distro(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["cloudinit", "render", "--distro", "debian"])
    assert result.exit_code == 2 and "exactly one of --spec FILE or --domain" in result.output
    result = runner.invoke(main, ["cloudinit", "render", "--spec",
                                  str(EXAMPLES / "example-vmi.yaml")])
    assert result.exit_code == 2 and "--distro is required" in result.output
    result = runner.invoke(main, ["cloudinit", "render", "--spec",
                                  str(EXAMPLES / "example-vmi.yaml"), "--distro", "fedora"])
    assert result.exit_code == 0 and result.output.startswith("#cloud-config\n")
