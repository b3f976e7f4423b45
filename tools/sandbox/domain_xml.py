"""libvirt domain XML for e2e test guests (built with lxml, never by string formatting)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from vmhealth.xmlsafe import parse_xml

from .guest_image import GuestImage


@dataclass(frozen=True)
class GuestSpec:
    """What a test guest has and runs.  Every field maps to a vmh.* kernel parameter
    that guest_init.sh reads, or to a device in the domain XML."""

    name: str
    mac: str
    ipv4: str
    ipv6: str | None = None
    prefix4: int = 24
    prefix6: int = 64
    http_port: int | None = None
    tcp_port: int | None = None
    watchdog_feeder: bool = False
    healthy_file: bool = True
    agent_block_rpcs: tuple[str, ...] = ()
    # None: no <watchdog> device (e.g. for `vmhealth apply` to add one).
    watchdog_action: str | None = "poweroff"
    memory_mib: int = 224
    # A qcow2 root disk (virtio, /dev/vda) for a guest booting a whole distribution.
    disk: str | None = None
    extra_cmdline: tuple[str, ...] = field(default_factory=tuple)

    def cmdline(self) -> str:
        words = [
            "console=ttyS0",
            # Fewer console writes and no calibration loops: noticeably faster on TCG.
            "loglevel=4",
            "mitigations=off",
            "tsc=reliable",
            "no_timer_check",
            # A guest that panics powers off instead of hanging a test.
            "panic=-1",
            f"vmh.ip={self.ipv4}/{self.prefix4}",
        ]
        if self.ipv6:
            words.append(f"vmh.ip6={self.ipv6}/{self.prefix6}")
        if self.http_port:
            words.append(f"vmh.http={self.http_port}")
        if self.tcp_port:
            words.append(f"vmh.tcp={self.tcp_port}")
        if self.watchdog_feeder:
            words.append("vmh.watchdog=1")
        if self.healthy_file:
            words.append("vmh.healthy=1")
        if self.agent_block_rpcs:
            words.append("vmh.ga_block=" + ",".join(self.agent_block_rpcs))
        words.extend(self.extra_cmdline)
        return " ".join(words)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str):
    element = etree.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def build(spec: GuestSpec, image: GuestImage, console_log: Path, bridge: str) -> str:
    domain = etree.Element("domain", type="qemu")  # TCG: no nested KVM here
    _sub(domain, "name", spec.name)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", "1")
    os_el = _sub(domain, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(image.kernel))
    _sub(os_el, "initrd", str(image.initrd))
    _sub(os_el, "cmdline", spec.cmdline())
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    if spec.disk:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2")
        _sub(disk, "source", file=spec.disk)
        _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=str(console_log))
    _sub(serial, "target", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    interface = _sub(devices, "interface", type="bridge")
    _sub(interface, "mac", address=spec.mac)
    _sub(interface, "source", bridge=bridge)
    _sub(interface, "model", type="virtio")
    if spec.watchdog_action:
        _sub(devices, "watchdog", model="i6300esb", action=spec.watchdog_action)
    # Nothing the tests do not need: every device costs boot time under TCG.
    _sub(devices, "memballoon", model="none")
    return etree.tostring(domain, pretty_print=True, encoding="unicode")


def watchdog_actions(xml: str) -> list[str]:
    """The action of every <watchdog> in a domain's XML, in order."""
    return [w.get("action") for w in parse_xml(xml).findall("devices/watchdog")]
