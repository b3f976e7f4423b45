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

import posix  # not os: see vmhealth.hook.spool

from vmhealth.hook.scan import DomainFacts, ScanError, scan
from vmhealth.hook.spool import environment, read_file

DEFAULT_CONFIG_DIR = "/etc/libvirt/qemu"
# For tests and benchmarks only, like VMHEALTH_SPOOL_DIR: libvirt clears the
# environment of hooks, so in production DEFAULT_CONFIG_DIR is read.
CONFIG_DIR_ENV = "VMHEALTH_LIBVIRT_CONFIG_DIR"
# A config file larger than this is not one libvirt wrote for a domain.
_MAX_CONFIG_BYTES = 10 * 1024 * 1024


def config_dir(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """Where libvirt keeps persistent definitions: `explicit`, else the environment's
    override (tests, benchmarks), else /etc/libvirt/qemu."""
    if explicit:
        return explicit
    return environment(CONFIG_DIR_ENV, environ) or DEFAULT_CONFIG_DIR


def definition(uuid: str, directory: str = DEFAULT_CONFIG_DIR
               ) -> tuple[bytes, DomainFacts] | None:
    """The persistent XML of the domain with this (canonical) uuid and what scan()
    found in it (so that it is read once), or None."""
    needle = f"<uuid>{uuid}</uuid>".encode("ascii")
    try:
        with posix.scandir(directory) as scanning:
            entries = list(scanning)
    except OSError:
        return None
    for entry in entries:
        if not entry.name.endswith(".xml") or not entry.is_file(follow_symlinks=False):
            continue
        data = read_file(entry.path, _MAX_CONFIG_BYTES)
        if data is None or needle not in data:
            continue
        try:
            facts = scan(data)
        except ScanError:
            continue
        if facts.uuid == uuid:
            return data, facts
    return None

