"""Watch the hook's spool directory (/run/vmhealth/domains) with inotify.

The hook writes /run/vmhealth/domains/<uuid>.xml (atomically: a temporary name, then
a rename) when a domain starts or libvirtd reconnects to it, and removes the file when
it stops. The daemon treats a file as a nudge to look the domain up in libvirt, which
stays the source of truth; files with other names (the hook's temporary files) are
ignored.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Callable

from inotify_simple import INotify, flags

UUID_FILE = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.xml$")
WATCH_FLAGS = flags.CLOSE_WRITE | flags.MOVED_TO | flags.DELETE | flags.MOVED_FROM


def uuid_of(filename: str) -> str | None:
    match = UUID_FILE.match(filename)
    return match.group(1) if match else None


def ensure_spool_dir(path: str) -> None:
    """Create the directory root-only; the hook writes there too."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def present_uuids(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return sorted(uuid for uuid in map(uuid_of, names) if uuid)


class SpoolWatcher:
    """Calls on_present(uuid) when a spool file appears, on_removed(uuid) when it goes."""

    def __init__(self, path: str, on_present: Callable[[str], None],
                 on_removed: Callable[[str], None]) -> None:
        self.path = path
        self._on_present = on_present
        self._on_removed = on_removed
        self._inotify: INotify | None = None

    def start(self) -> None:
        ensure_spool_dir(self.path)
        self._inotify = INotify(nonblocking=True)
        self._inotify.add_watch(self.path, WATCH_FLAGS)
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._read)
        # Files written while the daemon was not running count as present.
        for uuid in present_uuids(self.path):
            self._on_present(uuid)

    def _read(self) -> None:
        assert self._inotify is not None
        for event in self._inotify.read(timeout=0):
            uuid = uuid_of(event.name)
            if uuid is None:
                continue
            if event.mask & (flags.CLOSE_WRITE | flags.MOVED_TO):
                self._on_present(uuid)
            elif event.mask & (flags.DELETE | flags.MOVED_FROM):
                self._on_removed(uuid)

    def stop(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
