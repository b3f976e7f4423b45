"""Which distribution a guest root runs, from os-release, and what that means for vmhealth."""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass
from pathlib import Path

OS_RELEASE_PATHS = ("etc/os-release", "usr/lib/os-release")  # os-release(5) lookup order


class Family(str, enum.Enum):
    FEDORA = "fedora"
    RHEL = "rhel"  # RHEL and rebuilds: CentOS Stream, Rocky, Alma, Oracle
    DEBIAN = "debian"  # Debian and Ubuntu


class RpcFilter(str, enum.Enum):
    """Where the distro's qemu-guest-agent unit takes its RPC filter from."""

    BLACKLIST_RPC = "BLACKLIST_RPC"  # RHEL 8: block list, guest-exec in it
    BLOCK_RPCS = "BLOCK_RPCS"  # RHEL 9.0-9.3: block list, guest-exec in it
    FILTER_RPC_ARGS = "FILTER_RPC_ARGS"  # RHEL 9.4+/10: --allow-rpcs without guest-exec
    QEMU_GA_ARGS = "QEMU_GA_ARGS"  # Fedora: commented out, nothing blocked
    NONE = "none"  # Debian/Ubuntu: the unit reads no filter at all


class DistroError(ValueError):
    pass


@dataclass(frozen=True)
class Distro:
    id: str
    version_id: str
    family: Family
    pretty_name: str = ""

    @property
    def version(self) -> tuple[int, ...]:
        parts = []
        for part in self.version_id.split("."):
            if not part.isdigit():
                break
            parts.append(int(part))
        return tuple(parts)

    @property
    def rpc_filter(self) -> RpcFilter:
        if self.family is Family.DEBIAN:
            return RpcFilter.NONE
        if self.family is Family.FEDORA:
            return RpcFilter.QEMU_GA_ARGS
        version = self.version or (0,)
        if version[0] <= 8:
            return RpcFilter.BLACKLIST_RPC
        if version[0] == 9 and version < (9, 4):
            return RpcFilter.BLOCK_RPCS
        return RpcFilter.FILTER_RPC_ARGS

    @property
    def uses_selinux(self) -> bool:
        return self.family is not Family.DEBIAN

    @property
    def agent_environment_file(self) -> str | None:
        return None if self.family is Family.DEBIAN else "/etc/sysconfig/qemu-ga"

    def describe(self) -> str:
        name = self.pretty_name or f"{self.id} {self.version_id}".strip()
        return f"{name} (family {self.family.value}, agent RPC filter: {self.rpc_filter.value})"


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines with shell-style quoting, as os-release(5) defines them."""
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            continue  # an unbalanced quote: skip the line as systemd does
        fields[key.strip()] = words[0] if words else ""
    return fields


def family_of(fields: dict[str, str]) -> Family | None:
    ids = [fields.get("ID", "").lower(), *fields.get("ID_LIKE", "").lower().split()]
    # ID wins over ID_LIKE: Fedora-derived RHEL says ID=rhel ID_LIKE=fedora.
    for name in ids:
        if name == "fedora":
            return Family.FEDORA
        if name in ("rhel", "centos", "rocky", "almalinux", "ol"):
            return Family.RHEL
        if name in ("debian", "ubuntu"):
            return Family.DEBIAN
    return None


def detect(root: str | Path = "/") -> Distro:
    root = Path(root)
    for relative in OS_RELEASE_PATHS:
        path = root / relative
        if path.is_file():
            fields = parse_os_release(path.read_text(errors="replace"))
            break
    else:
        raise DistroError(f"no os-release file under {root} (looked for "
                          f"{', '.join('/' + p for p in OS_RELEASE_PATHS)})")
    family = family_of(fields)
    if family is None:
        raise DistroError(f"unsupported distribution ID={fields.get('ID', '')!r} "
                          f"ID_LIKE={fields.get('ID_LIKE', '')!r} in {path}; vmhealth knows "
                          "Fedora, RHEL and its rebuilds, Debian and Ubuntu")
    return Distro(id=fields.get("ID", ""), version_id=fields.get("VERSION_ID", ""),
                  family=family, pretty_name=fields.get("PRETTY_NAME", ""))


# The distros `vmhealth cloudinit render --distro` knows, as a guest would report them.
RENDER_TARGETS = {
    "fedora": Distro(id="fedora", version_id="40", family=Family.FEDORA),
    "rhel9": Distro(id="rhel", version_id="9.4", family=Family.RHEL),
    "debian": Distro(id="debian", version_id="12", family=Family.DEBIAN),
}
