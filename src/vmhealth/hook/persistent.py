"""The domain's persistent definition, as libvirt keeps it, for migrate and restore.

A save image holds the XML of the moment it was saved. When `vmhealth apply` changes
the spec of a saved (shut off) domain, only the persistent definition learns of it,
so restore must align the watchdog with the persistent definition's spec, not with
the one inside the image. The hook may not ask libvirt (it is waiting for us), so it
reads the file libvirt writes for every persistent domain of the system instance:
/etc/libvirt/qemu/<name>.xml. The file is found by its <uuid> (a byte search, then a
check with the lean reader), never by the domain's name.

Transient domains, and a migration's destination before the definition arrives, have
no such file: the caller then uses the XML it was given.
"""

from __future__ import annotations

import os

from vmhealth.hook.scan import ScanError, scan

DEFAULT_CONFIG_DIR = "/etc/libvirt/qemu"
# A config file larger than this is not one libvirt wrote for a domain.
_MAX_CONFIG_BYTES = 10 * 1024 * 1024


def definition(uuid: str, config_dir: str = DEFAULT_CONFIG_DIR) -> bytes | None:
    """The persistent XML of the domain with this (canonical) uuid, or None."""
    needle = f"<uuid>{uuid}</uuid>".encode("ascii")
    try:
        entries = list(os.scandir(config_dir))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.endswith(".xml") or not entry.is_file(follow_symlinks=False):
            continue
        data = _read(entry.path)
        if data is None or needle not in data:
            continue
        try:
            if scan(data).uuid == uuid:
                return data
        except ScanError:
            continue
    return None


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as source:
        data = source.read(_MAX_CONFIG_BYTES + 1)
    return data if len(data) <= _MAX_CONFIG_BYTES else None
