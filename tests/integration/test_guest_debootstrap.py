"""`vmhealth guest setup` on a real Debian root made with debootstrap, offline (chroot).

The minbase root is built once (a few minutes) and cached under build/debootstrap/;
each run copies it, so the cache stays pristine. The setup installs the packages with
apt inside the chroot (network to Debian's mirror needed) and must start nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner
from tests.ci import require_tool
from tests.unit.guest_support import REPO

from vmhealth.cli import main

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
CACHE = REPO / "build" / "debootstrap" / SUITE


def _debootstrap_root() -> os.PathLike:
    if CACHE.is_dir():
        return CACHE
    require_tool("debootstrap")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    partial = CACHE.with_name(SUITE + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(partial), MIRROR],
                   check=True, capture_output=True, timeout=1800)
    partial.rename(CACHE)  # only a complete root becomes the cache
    return CACHE


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    source = _debootstrap_root()
    require_tool("chroot")
    root = tmp_path_factory.mktemp("debootstrap") / "root"
    subprocess.run(["cp", "-a", str(source), str(root)], check=True, timeout=600)
    return root


def test_setup_in_a_debootstrap_root_twice(debian_root, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("readinessProbe:\n  exec:\n    command: [cat, /tmp/healthy.txt]\n"
                    "watchdog: {model: i6300esb}\n")
    args = ["guest", "setup", "--spec", str(spec), "--root", str(debian_root)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "family debian" in first.output
    assert "installed qemu-guest-agent, watchdog" in first.output
    assert (debian_root / "usr/sbin/qemu-ga").exists()
    conf = (debian_root / "etc/watchdog.conf").read_text()
    assert "\nwatchdog-device = /dev/watchdog\n" in conf
    assert "\nwatchdog-timeout = 60\n" in conf and "\ninterval = 10\n" in conf
    default = (debian_root / "etc/default/watchdog").read_text()
    assert "run_watchdog=1\n" in default and 'watchdog_module="i6300esb"\n' in default
    assert (debian_root / "etc/systemd/system/default.target.wants/watchdog.service"
            ).is_symlink()
    # Nothing was started, and the start guard we put in the chroot is gone again.
    assert not (debian_root / "usr/sbin/policy-rc.d").exists()
    assert not (debian_root / "run/watchdog.pid").exists()
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert "nothing changed: the guest already matches the plan" in second.output
