"""vmhealth installed the way a guest installs it: no host dependencies.

A fresh virtual environment without the system's site packages gets vmhealth's wheel
and its install_requires only (from the package index): no libvirt-python, aiohttp,
prometheus-client, httptools, pycdlib, bcrypt or inotify_simple, and no native lane.
The guest commands must still run, and every guest module import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.ci import missing
from tests.wheel import build_pure_wheel

TIMEOUT = 600  # seconds: a venv and four packages from the index
HOST_ONLY = ("libvirt", "aiohttp", "prometheus_client", "httptools", "pycdlib", "bcrypt",
             "inotify_simple", "vmhealth_fastlane")
GUEST_MODULES = ("vmhealth.cli", "vmhealth.cli_guest", "vmhealth.guest.setup",
                 "vmhealth.guest.plan", "vmhealth.guest.system", "vmhealth.guest.distro",
                 "vmhealth.guest.edits", "vmhealth.spec", "vmhealth.manifest")


def checked(argv, **kwargs) -> str:
    done = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False, **kwargs)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def guest_venv(tmp_path_factory):
    top = tmp_path_factory.mktemp("guest")
    wheel = build_pure_wheel(top / "wheels")  # no C compiler: vmhealth is pure Python
    venv = top / "venv"
    checked([Path(sys.base_prefix) / "bin" / "python3", "-m", "venv", venv])
    done = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if done.returncode != 0:
        missing(f"cannot install vmhealth's dependencies from the package index "
                f"(network?):\n{done.stderr[-2000:]}")
    return venv


def test_no_host_dependency_is_installed(guest_venv):
    probe = ("import importlib.util, sys; "
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))")
    assert checked([guest_venv / "bin/python", "-c", probe, *HOST_ONLY]).strip() == ""


def test_guest_commands_run(guest_venv):
    assert "setup" in checked([guest_venv / "bin/vmhealth", "guest", "--help"])
    assert "Usage: vmhealth guest check" in checked(
        [guest_venv / "bin/vmhealth", "guest", "check", "--help"])


@pytest.mark.parametrize("module", GUEST_MODULES)
def test_guest_module_imports_alone(guest_venv, module):
    checked([guest_venv / "bin/python", "-c", f"import {module}"])



@pytest.mark.parametrize("argv", [("daemon",), ("apply", "web1", "-f", "{spec}")])
def test_a_host_command_says_what_to_install(guest_venv, tmp_path, argv):
    spec = tmp_path / "spec.yaml"
    spec.write_text("readinessProbe:\n  tcpSocket: {port: 80}\n")
    done = subprocess.run([str(guest_venv / "bin/vmhealth"),
                           *(arg.format(spec=spec) for arg in argv)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "pip install 'vmhealth[host]'" in done.stderr and "Traceback" not in done.stderr
