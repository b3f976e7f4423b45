"""The cloud image builder's decisions that need no build: when tests/e2e/run builds it,
what its key names, and the disk a guest boots it from."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.sandbox import cloud_image, domain_xml
from tools.sandbox.guest_image import GuestImage
from vmhealth.xmlsafe import parse_xml


@pytest.fixture
def builds(monkeypatch):
    calls = []
    monkeypatch.setattr(cloud_image, "build", lambda: calls.append(1) or
                        cloud_image.CloudImage(Path("d"), None, Path("m"), Path("x")))
    monkeypatch.setattr(cloud_image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cloud_image.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    return calls


@pytest.mark.parametrize("args, built", [
    (["-q", "tests/e2e"], True),
    (["tests/e2e/test_cloudinit_boot.py"], True),
    (["-x", "tests/e2e/test_cloudinit_boot.py::test_second_boot_changes_nothing"], True),
    (["tests/e2e/test_daemon.py"], False),
    (["-k", "watchdog", "tests/e2e/test_smoke.py"], False),
    (["tests/unit"], False),
])
def test_built_before_the_sandbox_only_when_selected(builds, args, built):
    cloud_image.build_if_selected(args)
    assert bool(builds) is built


def test_a_failed_build_is_left_for_the_test_to_report(monkeypatch, capsys):
    def fail():
        raise RuntimeError("mmdebstrap failed (25); see build.log")
    monkeypatch.setattr(cloud_image, "build", fail)
    monkeypatch.setattr(cloud_image.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cloud_image.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    cloud_image.build_if_selected(["tests/e2e"])
    assert "did not build: mmdebstrap failed (25)" in capsys.readouterr().err


def test_key_names_the_sources_and_changes_with_a_version(monkeypatch):
    monkeypatch.setattr(cloud_image, "_candidate_versions",
                        lambda packages: [f"{name}=1" for name in packages])
    key, text = cloud_image.cache_key()
    assert cloud_image.DEBIAN_SOURCES[0] in text and "\ncloud-init=1\n" in text
    monkeypatch.setattr(cloud_image, "_candidate_versions",
                        lambda packages: [f"{name}=2" for name in packages])
    assert cloud_image.cache_key()[0] != key


def test_guest_with_a_disk_boots_it_as_vda(tmp_path):
    spec = domain_xml.GuestSpec(name="g", mac="52:54:00:d5:00:01", ipv4="192.168.213.10",
                                disk="/images/overlay.qcow2")
    image = GuestImage(kernel=tmp_path / "vmlinuz", initrd=tmp_path / "initrd",
                       kernel_version="6.1")
    root = parse_xml(domain_xml.build(spec, image, tmp_path / "console.log", "br0"))
    disks = root.findall("devices/disk")
    assert len(disks) == 1
    assert disks[0].find("source").get("file") == "/images/overlay.qcow2"
    assert disks[0].find("driver").get("type") == "qcow2"
    assert disks[0].find("target").attrib == {"dev": "vda", "bus": "virtio"}
    plain = parse_xml(domain_xml.build(
        domain_xml.GuestSpec(name="g", mac="52:54:00:d5:00:01", ipv4="192.168.213.10"),
        image, tmp_path / "console.log", "br0"))
    assert plain.findall("devices/disk") == []


def test_a_failed_build_keeps_its_log_and_nothing_else(monkeypatch, tmp_path):
    def broken(work, _key_text):
        (work / "build.log").write_text("E: apt-get update failed\n")
        raise RuntimeError("mmdebstrap failed (25)")
    monkeypatch.setattr(cloud_image, "cache_key", lambda: ("k", "key\n"))
    monkeypatch.setattr(cloud_image, "_build_into", broken)
    with pytest.raises(RuntimeError, match="mmdebstrap failed .25. .log kept as .*cloud-fail"):
        cloud_image.build(tmp_path)
    assert (tmp_path / cloud_image.FAILED_LOG).read_text() == "E: apt-get update failed\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [cloud_image.FAILED_LOG]
