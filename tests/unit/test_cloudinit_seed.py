"""The NoCloud seed ISO (read back with pycdlib and isoinfo) and attaching it to a domain."""

from __future__ import annotations

import subprocess
import sys

import libvirt
import pytest
import yaml
from click.testing import CliRunner
from tests.ci import require_tool
from tests.unit.guest_support import REPO

from vmhealth import seediso
from vmhealth.cli import Context, main
from vmhealth.domainxml import apply_spec
from vmhealth.manifest import load_manifest
from vmhealth.xmlsafe import parse_xml

DOMAIN_XML = """<domain type='test'>
  <name>web1</name>
  <uuid>6f9a3c1e-0d4b-4b7e-9c55-7d1f6c0a2b11</uuid>
  <memory>262144</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><disk type='file' device='disk'><source file='/var/lib/x.img'/>
    <target dev='sda' bus='sata'/></disk></devices>
</domain>"""


@pytest.fixture
def conn(tmp_path):
    spec = load_manifest(REPO / "cloudinit" / "example-vmi.yaml").spec
    xml = apply_spec(DOMAIN_XML, spec).xml
    root = parse_xml(xml)
    driver = tmp_path / "driver.xml"
    node = ("<node><cpu><mhz>2000</mhz><nodes>1</nodes><sockets>1</sockets><cores>1</cores>"
            "<threads>1</threads></cpu><memory>1048576</memory></node>")
    driver.write_text(node)
    connection = libvirt.open(f"test://{driver}")
    connection.defineXML(xml)
    assert root.find("name").text == "web1"
    yield connection
    connection.close()


def test_iso_has_label_and_files_in_every_naming(tmp_path):
    files = {"user-data": "#cloud-config\n{}\n", "meta-data": seediso.meta_data("iid-1", "h"),
             "network-config": "version: 2\n"}
    iso = tmp_path / "seed.iso"
    seediso.write_atomic(iso, seediso.build_iso(files))
    label, found = seediso.read_iso(iso)
    assert label == "cidata" and found == files
    assert yaml.safe_load(found["meta-data"]) == {"instance-id": "iid-1", "local-hostname": "h"}
    isoinfo = require_tool("isoinfo")
    pvd = subprocess.run([isoinfo, "-d", "-i", str(iso)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "Volume id: cidata" in pvd
    joliet = subprocess.run([isoinfo, "-J", "-f", "-i", str(iso)], capture_output=True,
                            text=True, timeout=60, check=True).stdout.split()
    assert sorted(joliet) == ["/meta-data", "/network-config", "/user-data"]
    rock = subprocess.run([isoinfo, "-R", "-x", "/user-data", "-i", str(iso)],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert rock == files["user-data"]


def test_build_iso_refuses_a_seed_without_meta_data():
    with pytest.raises(ValueError, match="user-data, meta-data"):
        seediso.build_iso({"user-data": "#cloud-config\n"})


def test_seed_command_writes_and_attaches_once(conn, tmp_path):
    iso = tmp_path / "seed.iso"
    runner = CliRunner()
    args = ["cloudinit", "seed", "web1", "-o", str(iso), "--distro", "rhel9", "--attach"]
    result = runner.invoke(main, args, obj=Context(uri=None, conn=conn))
    assert result.exit_code == 0, result.output
    label, files = seediso.read_iso(iso)
    assert label == "cidata" and sorted(files) == ["meta-data", "user-data"]
    assert yaml.safe_load(files["meta-data"])["instance-id"] == \
        "6f9a3c1e-0d4b-4b7e-9c55-7d1f6c0a2b11"
    assert files["user-data"].startswith("#cloud-config\n")
    assert "user: fedora" in files["user-data"]  # the manifest's user data, merged
    xml = parse_xml(conn.lookupByName("web1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    cdroms = xml.findall("devices/disk[@device='cdrom']")
    assert len(cdroms) == 1
    assert cdroms[0].find("source").get("file") == str(iso.resolve())
    assert cdroms[0].find("readonly") is not None
    assert cdroms[0].find("target").get("bus") == "sata"
    assert cdroms[0].find("target").get("dev") == "sdb"  # sda is taken
    again = runner.invoke(main, args, obj=Context(uri=None, conn=conn))
    assert again.exit_code == 0 and "already attached" in again.output
    xml = parse_xml(conn.lookupByName("web1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert len(xml.findall("devices/disk[@device='cdrom']")) == 1


def test_seed_of_a_domain_without_spec_fails_clearly(conn, tmp_path):
    conn.defineXML(DOMAIN_XML.replace("web1", "plain").replace("6f9a", "7f9a"))
    result = CliRunner().invoke(main, ["cloudinit", "seed", "plain", "-o",
                                       str(tmp_path / "s.iso"), "--distro", "debian"],
                                obj=Context(uri=None, conn=conn))
    assert result.exit_code == 1 and "has no health spec" in result.output
    assert not (tmp_path / "s.iso").exists()


def test_seed_from_a_spec_with_an_instance_id_needs_no_libvirt(tmp_path):
    """--spec and --instance-id name everything the seed holds: libvirt is not asked
    (the URI below names a driver file that does not exist)."""
    iso = tmp_path / "seed.iso"
    missing_driver = f"test://{tmp_path / 'no-such-driver.xml'}"
    result = CliRunner().invoke(main, [
        "cloudinit", "seed", "web1", "-o", str(iso), "--distro", "debian",
        "--spec", str(REPO / "cloudinit" / "example-vmi.yaml"), "--instance-id", "iid-7"],
        obj=Context(uri=missing_driver))
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(seediso.read_iso(iso)[1]["meta-data"])["instance-id"] == "iid-7"
    # Without --instance-id the domain's UUID is the default: then libvirt is asked.
    again = CliRunner().invoke(main, [
        "cloudinit", "seed", "web1", "-o", str(tmp_path / "other.iso"), "--distro",
        "debian", "--spec", str(REPO / "cloudinit" / "example-vmi.yaml")],
        obj=Context(uri=missing_driver))
    assert again.exit_code == 1 and not (tmp_path / "other.iso").exists(), again.output


def test_seed_without_pycdlib_names_the_host_install(tmp_path, monkeypatch):
    """A guest-only install has no pycdlib: the seed command says what to install and
    writes nothing."""
    monkeypatch.setitem(sys.modules, "pycdlib", None)  # `import pycdlib` raises
    iso = tmp_path / "seed.iso"
    result = CliRunner().invoke(main, [
        "cloudinit", "seed", "web1", "-o", str(iso), "--distro", "debian",
        "--spec", str(REPO / "cloudinit" / "example-vmi.yaml"), "--instance-id", "iid-7"],
        obj=Context(uri=None))
    assert result.exit_code == 1, result.output
    assert "pycdlib is not installed" in result.output
    assert "vmhealth[host]" in result.output
    assert not iso.exists() and list(tmp_path.iterdir()) == []
