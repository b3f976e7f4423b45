"""The vmhealth qemu hook in a real libvirtd: installed with `vmhealth hook install`,
refusing an invalid spec, handing domains to the spool directory, and aligning the
watchdog on restore after `vmhealth apply` changed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tools.sandbox import paths
from tools.sandbox.domain_xml import watchdog_actions
from tools.sandbox.waiting import wait_until

pytestmark = pytest.mark.e2e

SPOOL = Path("/run/vmhealth/domains")
SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("vmhealth")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def _virsh(sandbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["virsh", "-c", sandbox.uri, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _spec_file(directory: Path, action: str, period: int = 10) -> Path:
    path = directory / f"spec-{action}-{period}.json"
    path.write_text(json.dumps({
        "livenessProbe": {"guestAgentPing": {}, "periodSeconds": period},
        "watchdog": {"model": "i6300esb", "action": action},
    }))
    return path


def _apply(sandbox, name: str, spec: Path) -> None:
    done = _cli("--connect", sandbox.uri, "apply", name, "-f", str(spec))
    assert done.returncode == 0, f"vmhealth apply failed:\n{done.stdout}\n{done.stderr}"


def _watchdog_actions(dom: libvirt.virDomain, flags: int = 0) -> list[str]:
    return watchdog_actions(dom.XMLDesc(flags))


@pytest.fixture(scope="module")
def hook_installed(sandbox):
    """`vmhealth hook install` into the sandbox's /etc/libvirt/hooks, reloading its
    libvirtd; removed again when the module is done so other modules run without it."""
    done = _cli("hook", "install")
    assert done.returncode == 0, done.stderr
    assert "/etc/libvirt/hooks/qemu.d/vmhealth: " in done.stdout
    assert "sent SIGHUP to libvirtd" in done.stdout
    yield done.stdout
    _cli("hook", "uninstall")


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_invalid_spec_refuses_start_and_virsh_says_why(sandbox, guest_factory,
                                                       hook_installed, work_dir):
    guest = guest_factory.create("hook-invalid", start=False)
    _apply(sandbox, guest.name, _spec_file(work_dir, "poweroff"))
    xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert '"periodSeconds":10' in xml
    # 0 would be the default (as in Kubernetes); a negative period is invalid.
    guest.dom.connect().defineXML(xml.replace('"periodSeconds":10', '"periodSeconds":-1'))

    def refused():
        # libvirtd handles the SIGHUP of `hook install` asynchronously; until it has,
        # a start would succeed, so undo that and try again.
        done = _virsh(sandbox, "start", guest.name)
        if done.returncode == 0:
            _virsh(sandbox, "destroy", guest.name)
            return None
        return done

    done = wait_until(refused, timeout=30, what="the hook to refuse the start")
    print(done.stderr)
    assert "its health spec is invalid" in done.stderr
    assert "metadata.spec.livenessProbe.periodSeconds: must be between 1" in done.stderr
    assert not guest.dom.isActive()


def test_start_writes_the_spool_file_and_stop_removes_it(sandbox, guest_factory,
                                                         hook_installed, work_dir):
    watched = guest_factory.create("hook-spool", start=False)
    plain = guest_factory.create("hook-plain", start=False)
    _apply(sandbox, watched.name, _spec_file(work_dir, "reset"))
    spooled = SPOOL / f"{watched.dom.UUIDString()}.xml"
    try:
        for guest in (watched, plain):
            assert _virsh(sandbox, "start", guest.name).returncode == 0
        assert spooled.exists()
        root = etree.fromstring(spooled.read_bytes(), SAFE_PARSER)
        assert root.findtext("name") == watched.name
        assert root.get("id")  # the live XML, with the domain's id
        assert oct(SPOOL.stat().st_mode & 0o777) == "0o700"
        assert not (SPOOL / f"{plain.dom.UUIDString()}.xml").exists()
    finally:
        for guest in (watched, plain):
            _virsh(sandbox, "destroy", guest.name)
    # stopped and release run before `virsh destroy` returns.
    assert not spooled.exists()


def test_restore_brings_back_the_action_applied_after_the_save(sandbox, guest_factory,
                                                              hook_installed, work_dir):
    guest = guest_factory.create("hook-restore", start=False)
    _apply(sandbox, guest.name, _spec_file(work_dir, "poweroff"))
    save_dir = paths.BUILD / "saves"
    save_dir.mkdir(parents=True, exist_ok=True)
    image = save_dir / f"{guest.name}.save"
    image.unlink(missing_ok=True)
    spooled = SPOOL / f"{guest.dom.UUIDString()}.xml"
    try:
        guest.start()
        assert _watchdog_actions(guest.dom) == ["poweroff"]
        saved = _virsh(sandbox, "save", guest.name, str(image), timeout=300)
        assert saved.returncode == 0, saved.stderr
        assert not guest.dom.isActive()
        assert not spooled.exists()

        _apply(sandbox, guest.name, _spec_file(work_dir, "reset"))
        assert _watchdog_actions(guest.dom, libvirt.VIR_DOMAIN_XML_INACTIVE) == ["reset"]
        image_xml = _virsh(sandbox, "save-image-dumpxml", str(image)).stdout
        assert "action='poweroff'" in image_xml  # the image still says poweroff

        restored = _virsh(sandbox, "restore", str(image), timeout=300)
        assert restored.returncode == 0, restored.stderr
        assert guest.dom.isActive()
        assert _watchdog_actions(guest.dom) == ["reset"]
        assert spooled.exists()  # started ran for the restored domain too
    finally:
        _virsh(sandbox, "destroy", guest.name)
        image.unlink(missing_ok=True)
