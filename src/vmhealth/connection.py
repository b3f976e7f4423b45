"""Opening libvirt connections and finding domains, with errors an operator can act on."""

from __future__ import annotations

import os

try:
    import libvirt
except ImportError:  # a guest's install: vmhealth without its host part
    libvirt = None  # type: ignore[assignment]

DEFAULT_URI = "qemu:///system"


class LibvirtError(Exception):
    """A libvirt failure, phrased for the operator."""


# What a host command run where only the guest side is installed tells the operator.
HOST_PART = ("this command runs on the host: install vmhealth's host part (RPM: vmhealth; "
             "pip: pip install 'vmhealth[host]')")


def require_libvirt() -> None:
    """Raise LibvirtError when libvirt-python is missing (vmhealth installed for a
    guest: the guest commands need none of the host's dependencies)."""
    if libvirt is None:
        raise LibvirtError(f"libvirt-python is not installed; {HOST_PART}")


def _quiet_libvirt() -> None:
    # libvirt's default error handler prints every error to stderr itself, which would
    # duplicate (and garble) the messages we print; we report errors from exceptions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def default_uri() -> str:
    return os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def open_connection(uri: str | None = None) -> libvirt.virConnect:
    require_libvirt()
    _quiet_libvirt()
    uri = uri or default_uri()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"cannot connect to libvirt at {uri}: {exc.get_error_message()} "
                           "(is libvirtd/virtqemud running, and may this user use it? "
                           "choose another with --connect or LIBVIRT_DEFAULT_URI)") from None


def lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise LibvirtError(f"domain {name!r} not found at {conn.getURI()} "
                               "(`virsh list --all` shows the names)") from None
        raise LibvirtError(f"cannot look up domain {name!r}: {exc.get_error_message()}"
                           ) from None


def persistent_xml(dom: libvirt.virDomain, *, secure: bool = True) -> str:
    """The persistent (inactive) definition; `secure` keeps passwords so a redefine
    does not drop them."""
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE
    if secure:
        flags |= libvirt.VIR_DOMAIN_XML_SECURE
    return dom.XMLDesc(flags)


def define(conn: libvirt.virConnect, xml: str) -> libvirt.virDomain:
    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise LibvirtError(f"libvirt refused the new definition: {exc.get_error_message()}"
                           ) from None
