"""Prove the sandbox left the host's files alone.

Inside the sandbox /etc/libvirt is a tmpfs and /etc/passwd may be a private copy, so
reading them there shows the sandbox's files.  A non-recursive bind mount of / shows
the host's root file system without the sandbox's mounts on top: that is what the
check reads at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

WATCHED = ("etc/libvirt", "etc/passwd", "etc/group")


def snapshot(root: Path = Path("/")) -> dict[str, str]:
    """Relative path -> a fingerprint, for every watched file below root."""
    found: dict[str, str] = {}
    for watched in WATCHED:
        top = root / watched
        entries = [top, *sorted(top.rglob("*"))] if top.is_dir() else [top]
        for path in entries:
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "link:" + str(path.readlink())
            elif path.is_dir():
                found[key] = "dir"
            elif path.exists():
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[key] = "missing"
    return found


@contextlib.contextmanager
def host_root(under: Path) -> Iterator[Path]:
    """The host's / without the sandbox's mounts, mounted below `under` (a tmpfs)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="host-root-", dir=under))
    subprocess.run(["mount", "--bind", "-o", "ro", "/", str(mountpoint)],
                   check=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, timeout=30)
        mountpoint.rmdir()


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [
        f"{key}: {before.get(key, 'absent')} -> {after.get(key, 'absent')}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]
