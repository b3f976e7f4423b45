"""The hand-off directory between the hook and the daemon.

    /run/vmhealth/domains/            mode 0700, owned by the hook's user (root)
        <uuid>.xml                    live domain XML, from started/reconnect to stopped
        <uuid>.watchdog-pending.json  a watchdog the spec wants but the running domain
                                      lacks (after migrate/restore); gone at stop
        <uuid>.validated              the hook's own cache of the last spec prepare
                                      accepted (never read by the daemon)

Every file appears atomically (a temporary file in the same directory, then rename),
so a reader watching with inotify (IN_MOVED_TO, IN_DELETE) never sees half a file.
Temporary files start with a dot. File names are built only from a canonical UUID
(scan.canonical_uuid): a domain name never reaches a path.
"""

from __future__ import annotations

import os
import stat

DEFAULT_SPOOL_DIR = "/run/vmhealth/domains"
# For tests and benchmarks only: libvirt clears the environment of hooks, so in
# production this is never set and DEFAULT_SPOOL_DIR is used.
SPOOL_DIR_ENV = "VMHEALTH_SPOOL_DIR"

XML_SUFFIX = ".xml"
PENDING_WATCHDOG_SUFFIX = ".watchdog-pending.json"
VALIDATED_SUFFIX = ".validated"
# What a stop removes: everything that describes the running instance.
RUNTIME_SUFFIXES = (XML_SUFFIX, PENDING_WATCHDOG_SUFFIX)


class SpoolError(OSError):
    """The spool directory is unusable (not a directory, a symlink, someone else's)."""


def spool_dir(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    return env.get(SPOOL_DIR_ENV) or DEFAULT_SPOOL_DIR


def ensure_dir(path: str) -> None:
    """Create `path` (mode 0700) if needed, and refuse one that is not safely ours."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"{path} is not a directory (a symlink or file is in the way)")
    if info.st_uid != os.geteuid():
        raise SpoolError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def file_path(directory: str, uuid: str, suffix: str) -> str:
    return os.path.join(directory, uuid + suffix)


def write_atomic(directory: str, uuid: str, suffix: str, data: bytes) -> str:
    """Write `data` as <uuid><suffix> in `directory`; readers see all of it or nothing."""
    ensure_dir(directory)
    final = file_path(directory, uuid, suffix)
    temporary = os.path.join(directory, f".{uuid}{suffix}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        # No fsync: the directory is on tmpfs (/run), where it buys nothing.
        os.replace(temporary, final)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    return final


def read(directory: str, uuid: str, suffix: str) -> bytes | None:
    try:
        fd = os.open(file_path(directory, uuid, suffix), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as source:
        return source.read()


def remove(directory: str, uuid: str, suffixes: tuple[str, ...]) -> list[str]:
    """Remove <uuid><suffix> for each suffix; return what was there."""
    removed = []
    for suffix in suffixes:
        path = file_path(directory, uuid, suffix)
        if _unlink_quietly(path):
            removed.append(path)
    return removed


def _unlink_quietly(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
