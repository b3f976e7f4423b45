"""Which addresses a guest's network probes may target (docs/security.md, "Probe targets").

A guest decides what its agent reports, and its ARP answers put any address it likes
beside its MAC in the host's neighbour table. Trusted as probe targets, they would let
a guest make the host probe, every period, the host's own services or other tenants'
VMs. So an address is a target only when it belongs to the domain:

- a DHCP lease (written by the host's own dnsmasq for a libvirt network) of one of the
  domain's own MAC addresses;
- an agent or ARP address reported for one of the domain's own MACs, inside a subnet
  of the network that MAC is attached to: a libvirt network's `<ip>` ranges, or the
  host bridge's own subnets for `<interface type='bridge'>`;
- never one of the host's own addresses, and never loopback, link-local, multicast or
  unspecified.

An interface the host has no subnet for (macvtap, user networking) gives agent and ARP
addresses nothing to be checked against: they are refused, and the probe's `host` field
is the operator's way to name a target.

Everything here but `read_nics` is a pure function, so the rules are tested directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

import libvirt
import psutil

from vmhealth.xmlsafe import parse_xml

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# A guest's agent may report anything: look at no more than this many interfaces and
# addresses per interface (a VM with more is not a VM a probe needs them all from).
MAX_INTERFACES = 64
MAX_ADDRESSES_PER_INTERFACE = 64


@dataclass(frozen=True)
class DomainNics:
    """What the host knows of a domain's network interfaces (read from its definition)."""

    macs: frozenset[str]  # lower case
    subnets: tuple[IPNetwork, ...]  # of the networks those MACs are attached to
    host_addresses: frozenset[IPAddress]  # every address of the host itself


def read_nics(dom: libvirt.virDomain) -> DomainNics:
    """Blocking: the domain's MACs, the subnets of its networks, the host's addresses."""
    root = parse_xml(dom.XMLDesc(0))
    host_interfaces = psutil.net_if_addrs()
    macs: set[str] = set()
    subnets: list[IPNetwork] = []
    for interface in root.iterfind("devices/interface"):
        mac = interface.find("mac")
        if mac is not None and mac.get("address"):
            macs.add(mac.get("address", "").lower())
        source = interface.find("source")
        if source is None:
            continue
        bridge = source.get("bridge")
        if interface.get("type") == "network" and source.get("network"):
            net_subnets, bridge = _network_subnets(dom.connect(), source.get("network", ""))
            subnets += net_subnets
        if bridge:
            subnets += _bridge_subnets(host_interfaces.get(bridge, []))
    host = frozenset(_host_addresses(host_interfaces))
    return DomainNics(frozenset(macs), tuple(dict.fromkeys(subnets)), host)


def _network_subnets(conn: libvirt.virConnect, name: str) -> tuple[list[IPNetwork], str | None]:
    """A libvirt network's <ip> subnets and its bridge (None when it cannot be read)."""
    try:
        root = parse_xml(conn.networkLookupByName(name).XMLDesc(0), "network XML")
    except libvirt.libvirtError:
        return [], None
    subnets = []
    for ip in root.iterfind("ip"):
        address = ip.get("address")
        mask = ip.get("prefix") or ip.get("netmask")
        if not address:
            continue
        try:
            subnets.append(ipaddress.ip_interface(f"{address}/{mask}" if mask else address)
                           .network)
        except ValueError:
            continue
    bridge = root.find("bridge")
    return subnets, bridge.get("name") if bridge is not None else None


def _bridge_subnets(addresses: Iterable[Any]) -> list[IPNetwork]:
    subnets = []
    for entry in addresses:
        if entry.family.name not in ("AF_INET", "AF_INET6") or not entry.netmask:
            continue
        try:
            address = entry.address.split("%", 1)[0]
            subnets.append(ipaddress.ip_interface(f"{address}/{entry.netmask}").network)
        except ValueError:
            continue
    return subnets


def _host_addresses(host_interfaces: dict[str, list[Any]]) -> list[IPAddress]:
    found = []
    for addresses in host_interfaces.values():
        for entry in addresses:
            if entry.family.name in ("AF_INET", "AF_INET6"):
                try:
                    found.append(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found


def libvirt_entries(interfaces: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(mac, address) pairs from libvirt's interfaceAddresses() answer."""
    pairs = []
    for info in list((interfaces or {}).values())[:MAX_INTERFACES]:
        mac = str(info.get("hwaddr") or "").lower()
        for addr in (info.get("addrs") or [])[:MAX_ADDRESSES_PER_INTERFACE]:
            if isinstance(addr, dict) and addr.get("addr"):
                pairs.append((mac, str(addr["addr"])))
    return pairs


def agent_entries(reply: Any) -> list[tuple[str, str]]:
    """(mac, address) pairs from the agent's guest-network-get-interfaces reply (any
    shape the guest sends: what is not as documented is skipped)."""
    pairs: list[tuple[str, str]] = []
    if not isinstance(reply, list):
        return pairs
    for interface in reply[:MAX_INTERFACES]:
        if not isinstance(interface, dict):
            continue
        mac = interface.get("hardware-address")
        addresses = interface.get("ip-addresses")
        if not isinstance(mac, str) or not isinstance(addresses, list):
            continue
        for entry in addresses[:MAX_ADDRESSES_PER_INTERFACE]:
            if isinstance(entry, dict) and isinstance(entry.get("ip-address"), str):
                pairs.append((mac.lower(), entry["ip-address"]))
    return pairs


def probe_targets(nics: DomainNics, leases: list[tuple[str, str]],
                  reported: list[tuple[str, str]]) -> list[str]:
    """The addresses probes may target, IPv4 before IPv6, each once: `leases` (the
    host's DHCP) of the domain's MACs, then `reported` (agent, ARP) addresses that pass
    the rules in the module docstring."""
    targets: list[IPAddress] = []
    for mac, text in leases:
        address = _usable(text, nics)
        if address is not None and mac in nics.macs:
            targets.append(address)
    for mac, text in reported:
        address = _usable(text, nics)
        if (address is not None and mac in nics.macs
                and any(address in subnet for subnet in nics.subnets
                        if subnet.version == address.version)):
            targets.append(address)
    unique = list(dict.fromkeys(targets))
    unique.sort(key=lambda a: a.version)  # stable: keeps source order within a family
    return [str(a) for a in unique]


def _usable(text: str, nics: DomainNics) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if (address.is_loopback or address.is_link_local or address.is_unspecified
            or address.is_multicast or address in nics.host_addresses):
        return None
    return address
