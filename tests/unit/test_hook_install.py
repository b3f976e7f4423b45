"""`vmhealth hook install|uninstall|status`, daemon reload and SELinux advice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmhealth.cli import main as cli_main
from vmhealth.hook import install
from vmhealth.hook.launcher import render


@pytest.fixture(autouse=True)
def no_systemd(monkeypatch, tmp_path):
    # Never reach the real systemctl from a unit test, on any machine.
    monkeypatch.setattr(install, "SYSTEMD_RUNNING", tmp_path / "no-systemd")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "hooks"


def cli(*args: str):
    return CliRunner().invoke(cli_main, ["hook", *args], catch_exceptions=False)


def test_install_puts_the_rendered_hook_in_qemu_d(root, tmp_path):
    result = cli("install", "--hooks-dir", str(root), "--pid-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    hook = root / "qemu.d" / "vmhealth"
    assert hook.read_text() == install.hook_text()
    assert hook.read_text().startswith(f"#!{sys.executable} -IS\n")
    assert os.access(hook, os.X_OK)
    assert not (root / "qemu").exists()  # libvirt >= 6.5 finds qemu.d by itself
    assert f"{hook}: installed" in result.output
    assert "neither virtqemud nor libvirtd is running" in result.output
    assert "SELinux:" in result.output


def test_install_twice_is_a_no_op_and_updates_an_old_hook(root, tmp_path):
    cli("install", "--hooks-dir", str(root), "--no-reload")
    again = cli("install", "--hooks-dir", str(root), "--no-reload")
    assert "already installed and current" in again.output
    (root / "qemu.d" / "vmhealth").write_text(render())  # another Python's rendering
    updated = cli("install", "--hooks-dir", str(root), "--no-reload")
    assert f"{root / 'qemu.d' / 'vmhealth'}: updated" in updated.output
    assert (root / "qemu.d" / "vmhealth").read_text() == install.hook_text()


def test_stub_is_installed_on_request_and_only_ours_is_removed(root):
    cli("install", "--hooks-dir", str(root), "--stub", "--no-reload")
    assert (root / "qemu").read_text() == install.STUB_TEXT
    assert os.access(root / "qemu", os.X_OK)
    result = cli("uninstall", "--hooks-dir", str(root), "--no-reload")
    assert result.exit_code == 0
    assert not (root / "qemu").exists()
    assert not (root / "qemu.d" / "vmhealth").exists()

    (root / "qemu").write_text("#!/bin/sh\n# someone else's\nexit 0\n")
    cli("install", "--hooks-dir", str(root), "--stub", "--no-reload")
    assert "someone else's" in (root / "qemu").read_text()
    cli("uninstall", "--hooks-dir", str(root), "--no-reload")
    assert (root / "qemu").exists()


def test_uninstall_when_not_installed(root):
    result = cli("uninstall", "--hooks-dir", str(root), "--no-reload")
    assert result.exit_code == 0
    assert "was not installed" in result.output


def test_status_exit_code_follows_the_hook(root, tmp_path):
    missing = cli("status", "--hooks-dir", str(root), "--pid-dir", str(tmp_path))
    assert missing.exit_code == 1
    assert "hook: not installed" in missing.output
    cli("install", "--hooks-dir", str(root), "--no-reload")
    ok = cli("status", "--hooks-dir", str(root), "--pid-dir", str(tmp_path))
    assert ok.exit_code == 0, ok.output
    assert "installed and current" in ok.output
    (root / "qemu.d" / "vmhealth").chmod(0o644)
    assert cli("status", "--hooks-dir", str(root)).exit_code == 1
    (root / "qemu.d" / "vmhealth").write_text(render())
    (root / "qemu.d" / "vmhealth").chmod(0o755)
    outdated = cli("status", "--hooks-dir", str(root))
    assert outdated.exit_code == 1
    assert "differs from what this vmhealth installs" in outdated.output


FAKE_DAEMON = """
import signal, sys, time
def on_hup(*_):
    open(sys.argv[1], "w").write("hup")
signal.signal(signal.SIGHUP, on_hup)
print("ready", flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


@pytest.fixture
def fake_virtqemud(tmp_path: Path):
    """A process whose name (/proc/PID/comm) is virtqemud, and its pidfile."""
    binary = tmp_path / "virtqemud"
    binary.symlink_to(os.path.realpath(sys.executable))
    marker = tmp_path / "got-sighup"
    process = subprocess.Popen([str(binary), "-c", FAKE_DAEMON, str(marker)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        pid_dir = tmp_path / "pids"
        pid_dir.mkdir()
        (pid_dir / "virtqemud.pid").write_text(f"{process.pid}\n")
        yield pid_dir, process.pid, marker
    finally:
        process.kill()
        process.wait(timeout=30)


def wait_for(path: Path, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_install_reloads_the_running_daemon_with_sighup(root, fake_virtqemud):
    pid_dir, pid, marker = fake_virtqemud
    result = cli("install", "--hooks-dir", str(root), "--pid-dir", str(pid_dir))
    assert result.exit_code == 0, result.output
    assert f"sent SIGHUP to virtqemud (pid {pid})" in result.output
    assert wait_for(marker)
    status = cli("status", "--hooks-dir", str(root), "--pid-dir", str(pid_dir))
    assert f"libvirt: virtqemud is running (pid {pid})" in status.output


def test_a_stale_pidfile_is_not_signalled(root, tmp_path):
    (tmp_path / "libvirtd.pid").write_text(f"{os.getpid()}\n")  # pytest, not libvirtd
    result = cli("install", "--hooks-dir", str(root), "--pid-dir", str(tmp_path))
    assert "neither virtqemud nor libvirtd is running" in result.output


def fake_tools(directory: Path, *, enabled: int, getsebool: str | None, code: int = 0) -> str:
    directory.mkdir()
    (directory / "selinuxenabled").write_text(f"#!/bin/sh\nexit {enabled}\n")
    if getsebool is not None:
        (directory / "getsebool").write_text(
            f"#!/bin/sh\necho '{getsebool}'\nexit {code}\n")
    for tool in directory.iterdir():
        tool.chmod(0o755)
    return str(directory)


@pytest.mark.parametrize("enabled,getsebool,code,expected", [
    (0, "virt_hooks_unconfined --> off", 0,
     "is off: the hook runs confined and may be denied writing /run/vmhealth/domains"),
    (0, "virt_hooks_unconfined --> on", 0, "is on: the hook runs unconfined; nothing to do"),
    (0, "Error getting active value for virt_hooks_unconfined", 1,
     "no virt_hooks_unconfined boolean"),
    (1, "virt_hooks_unconfined --> off", 0, "SELinux: disabled"),
    (0, None, 0, "SELinux: not present"),
])
def test_selinux_advice(tmp_path, enabled, getsebool, code, expected):
    path = fake_tools(tmp_path / "bin", enabled=enabled, getsebool=getsebool, code=code)
    advice = install.selinux_advice(path)
    assert expected in advice
    if "is off" in expected:
        assert advice.endswith("setsebool -P virt_hooks_unconfined on")


def test_render_refuses_an_interpreter_a_shebang_cannot_hold():
    with pytest.raises(ValueError, match="absolute path without spaces"):
        render("/opt/my python/bin/python3")
    with pytest.raises(ValueError, match="absolute path"):
        render("python3")


@pytest.mark.parametrize("command", ["install", "uninstall", "status"])
def test_the_directories_are_documented_options(command):
    shown = " ".join(cli(command, "--help").output.split())
    assert "--hooks-dir DIR libvirt's hook directory" in shown
    assert "[default: /etc/libvirt/hooks]" in shown
    assert "--pid-dir DIR Where virtqemud.pid or libvirtd.pid is" in shown
    assert "[default: /run/libvirt]" in shown
    assert "only for tests" not in shown


def test_status_reports_the_spool_directory_the_hook_writes(root, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0b2a8c4e-2f62-4c4e-9d1b-0c1c2a9b7c11.xml").write_text("<domain/>")
    monkeypatch.setenv("VMHEALTH_SPOOL_DIR", str(spool))
    shown = cli("status", "--hooks-dir", str(root), "--pid-dir", str(tmp_path)).output
    assert f"spool: {spool}: 1 running domain(s) handed over" in shown
