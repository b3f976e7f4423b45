"""`vmhealth cloudinit seed`: a NoCloud seed ISO, and attaching it to a domain.

NoCloud finds its seed on a file system labelled `cidata` holding `user-data` and
`meta-data` (which must name an `instance-id`), optionally `network-config`. The ISO
carries Rock Ridge and Joliet names so that every reader sees the lower-case names
with the hyphen, which plain ISO9660 cannot spell.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from lxml import etree

from vmhealth.connection import HOST_PART, define, persistent_xml
from vmhealth.xmlsafe import parse_xml, to_string

if TYPE_CHECKING:
    import libvirt

VOLUME_LABEL = "cidata"
# ISO9660 level-3 names (d-characters only) for readers without Rock Ridge or Joliet.
ISO_NAMES = {"user-data": "USER_DATA", "meta-data": "META_DATA",
             "network-config": "NETWORK_CONFIG"}


def meta_data(instance_id: str, hostname: str | None = None) -> str:
    data = {"instance-id": instance_id}
    if hostname:
        data["local-hostname"] = hostname
    return yaml.safe_dump(data, sort_keys=False)


class SeedToolMissing(RuntimeError):
    """The ISO writer (pycdlib, part of the host install) is not installed."""


def build_iso(files: dict[str, str]) -> bytes:
    """The seed ISO holding `files` (name -> text), names as NoCloud expects them."""
    unknown = set(files) - set(ISO_NAMES)
    if unknown or "user-data" not in files or "meta-data" not in files:
        raise ValueError(f"a NoCloud seed holds user-data, meta-data and optionally "
                         f"network-config; got {sorted(files)}")
    try:
        import pycdlib  # a host-only dependency: `vmhealth guest` runs without it
    except ImportError:
        raise SeedToolMissing(f"pycdlib is not installed; {HOST_PART}") from None

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    try:
        for name, text in files.items():
            data = text.encode("utf-8")
            iso.add_fp(io.BytesIO(data), len(data), f"/{ISO_NAMES[name]}.;1",
                       rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def read_iso(path: str | Path) -> tuple[str, dict[str, str]]:
    """(volume label, {Rock Ridge name: text}) of a seed ISO, to check what was written."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode("ascii").strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = child.rock_ridge.name().decode("utf-8")
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue().decode("utf-8")
    finally:
        iso.close()
    return label, files


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temp, 0o644)  # QEMU (another user) must read it
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


# ---------------------------------------------------------------------------
# Attaching the seed to a domain's persistent definition
# ---------------------------------------------------------------------------

def _free_target(devices: etree._Element, prefix: str) -> str:
    used = {target.get("dev") for target in devices.iterfind("disk/target")}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        if prefix + letter not in used:
            return prefix + letter
    raise ValueError(f"no free {prefix}* disk target left in the domain")


def add_cdrom(domain_xml: str, iso_path: str) -> str | None:
    """The domain XML with a read-only cdrom for `iso_path`; None if it has one already."""
    root = parse_xml(domain_xml)
    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
    for disk in devices.iterfind("disk"):
        source = disk.find("source")
        if source is not None and source.get("file") == iso_path:
            return None
    machine = (root.find("os/type").get("machine", "") if root.find("os/type") is not None
               else "")
    # q35 has SATA (AHCI) built in, i440fx ("pc") has IDE; both boot a cdrom anywhere.
    bus, prefix = ("sata", "sd") if "q35" in machine else ("ide", "hd")
    disk = etree.SubElement(devices, "disk", type="file", device="cdrom")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=iso_path)
    etree.SubElement(disk, "target", dev=_free_target(devices, prefix), bus=bus)
    etree.SubElement(disk, "readonly")
    return to_string(root)


def attach_seed(dom: libvirt.virDomain, iso_path: str) -> bool:
    """Add the seed to the persistent definition (one defineXML); False if already there.

    The running domain is left alone: cloud-init reads the seed at the next boot.
    """
    new = add_cdrom(persistent_xml(dom), str(Path(iso_path).resolve()))
    if new is None:
        return False
    define(dom.connect(), new)
    return True
