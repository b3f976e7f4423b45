"""How `guest setup`/`check` touch a guest system: commands, processes, units.

Everything works against a root directory. "/" is the running guest; any other root
(a fixture tree, a debootstrap chroot, a mounted image) is offline: commands run in a
chroot with service starts refused, units are enabled by writing their symlinks, and
nothing is started or restarted.
"""

from __future__ import annotations

import configparser
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

COMMAND_TIMEOUT = 900  # package installs can be slow; never wait forever
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")
# Debian's invoke-rc.d consults policy-rc.d; 101 = "action forbidden": no service starts.
POLICY_RC_D = "usr/sbin/policy-rc.d"
POLICY_RC_D_TEXT = "#!/bin/sh\n# vmhealth guest setup on an offline root: start nothing\nexit 101\n"


class CommandFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Process:
    name: str
    cmdline: tuple[str, ...]
    started: float = 0.0  # seconds since the epoch (psutil's create_time)


class GuestSystem:
    """A guest root and the commands run against it (tests substitute `runner`)."""

    def __init__(self, root: str | Path = "/", *, runner=None, processes=None) -> None:
        self.root = Path(root)
        self.live = self.root.resolve() == Path("/")
        self._runner = runner or self._run
        self._processes = processes

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def run(self, argv: list[str], *, env: dict[str, str] | None = None) -> str:
        if not self.live:
            argv = ["chroot", str(self.root), *argv]
        return self._runner(argv, env)

    @staticmethod
    def _run(argv: list[str], env: dict[str, str] | None) -> str:
        full_env = dict(os.environ, **(env or {}))
        try:
            done = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CommandFailed(f"{argv[0]}: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise CommandFailed(f"{' '.join(argv)} exited with {done.returncode}: "
                                + " | ".join(tail))
        return done.stdout

    def processes(self) -> list[Process] | None:
        """Running processes of the guest; None for an offline root (not knowable)."""
        if self._processes is not None:
            return self._processes()
        if not self.live:
            return None
        found = []
        for proc in psutil.process_iter(["name", "cmdline", "create_time"]):
            cmdline = tuple(proc.info.get("cmdline") or ())
            found.append(Process(name=proc.info.get("name") or "", cmdline=cmdline,
                                 started=proc.info.get("create_time") or 0.0))
        return found

    # -- systemd units, offline-capable ------------------------------------------------

    def unit_file(self, unit: str) -> Path | None:
        for directory in UNIT_DIRS:
            candidate = self.root / directory / unit
            if candidate.is_file():
                return candidate
        return None

    def unit_links(self, unit: str) -> list[Path]:
        """The symlinks `systemctl enable` creates, from the unit's [Install] section."""
        unit_file = self.unit_file(unit)
        if unit_file is None:
            return []
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # keys are case-sensitive in unit files
        try:
            parser.read_string(unit_file.read_text(errors="replace"))
        except configparser.Error:
            return []
        if not parser.has_section("Install"):
            return []  # static unit (Debian's agent: started by udev when the port appears)
        links = []
        for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires")):
            for target in parser.get("Install", key, fallback="").split():
                links.append(self.root / "etc/systemd/system" / f"{target}{suffix}" / unit)
        return links

    def unit_enabled(self, unit: str) -> bool | None:
        """True/False for an installable unit, None for a static one or no unit."""
        links = self.unit_links(unit)
        if not links:
            return None
        return all(link.is_symlink() or link.exists() for link in links)

    def enable_unit_offline(self, unit: str) -> list[str]:
        unit_file = self.unit_file(unit)
        created = []
        for link in self.unit_links(unit):
            if link.is_symlink() or link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            target = "/" + str(unit_file.relative_to(self.root))
            link.symlink_to(target)
            created.append(f"enabled {unit}: {'/' + str(link.relative_to(self.root))} -> "
                           f"{target}")
        return created

    # -- offline package installs --------------------------------------------------------

    def forbid_service_starts(self) -> bool:
        """Install policy-rc.d in an offline Debian root; True if we did (remove later)."""
        if self.live:
            return False
        path = self.path("/" + POLICY_RC_D)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(POLICY_RC_D_TEXT)
        path.chmod(0o755)
        return True

    def allow_service_starts(self) -> None:
        path = self.path("/" + POLICY_RC_D)
        if path.read_text() == POLICY_RC_D_TEXT:
            path.unlink()
