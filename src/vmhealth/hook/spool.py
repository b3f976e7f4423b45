"""The hand-off directory between the hook and the daemon.

    /run/vmhealth/domains/            mode 0700, owned by the hook's user (root)
        <uuid>.xml          live domain XML, from started/reconnect to stopped
        <uuid>.validated    the hook's own cache of the last spec prepare accepted
                            (never read by the daemon)

Every file appears atomically (a temporary file in the same directory, then rename),
so a reader watching with inotify (IN_MOVED_TO, IN_DELETE) never sees half a file.
Temporary files start with a dot. File names are built only from a canonical UUID
(scan.canonical_uuid): a domain name never reaches a path.
"""

from __future__ import annotations

# posix, not os: os is a Python layer over posix whose import (with
# _collections_abc, stat and posixpath) costs about 1 ms, a sixth of a bare
# interpreter start, on every hook run that touches a file (benchmarks/bench_hook.py).
# The hook runs on Linux only, and needs only these few calls.
import posix

# The one home of the hand-off directory: the hook writes it and the daemon watches it
# (vmhealth.monitor.config's spool_dir is spool_dir() below; it is no config key,
# because the hook cannot read the daemon's configuration file).
DEFAULT_SPOOL_DIR = "/run/vmhealth/domains"
# Set for both in sandboxes, tests and benchmarks. libvirt starts hooks with an
# environment of its own making, so on a host it is never set and both use
# DEFAULT_SPOOL_DIR.
SPOOL_DIR_ENV = "VMHEALTH_SPOOL_DIR"

XML_SUFFIX = ".xml"
VALIDATED_SUFFIX = ".validated"
# What a stop removes: everything that describes the running instance.
RUNTIME_SUFFIXES = (XML_SUFFIX,)


class SpoolError(OSError):
    """The spool directory is unusable (not a directory, a symlink, someone else's)."""


def environment(name: str, environ: dict[str, str] | None = None) -> str | None:
    """os.environ.get(name), from posix's bytes (decoded as os decodes them)."""
    if environ is not None:
        return environ.get(name)
    value = posix.environ.get(name.encode("ascii"))
    return None if value is None else value.decode("utf-8", "surrogateescape")


def spool_dir(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    if explicit:
        return explicit
    return environment(SPOOL_DIR_ENV, environ) or DEFAULT_SPOOL_DIR


def join(directory: str, name: str) -> str:
    """os.path.join for a plain file name."""
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _make_dirs(path: str, mode: int) -> None:
    """os.makedirs(path, mode, exist_ok=True): missing parents get 0777 (less the
    umask), as os.makedirs gives them."""
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent:
            raise
        _make_dirs(parent, 0o777)
        try:
            posix.mkdir(path, mode)
        except FileExistsError:
            return


def ensure_dir(path: str) -> None:
    """Create `path` (mode 0700) if needed, and refuse one that is not safely ours."""
    _make_dirs(path, 0o700)
    info = posix.lstat(path)
    if info.st_mode & _S_IFMT != _S_IFDIR:
        raise SpoolError(f"{path} is not a directory (a symlink or file is in the way)")
    if info.st_uid != posix.geteuid():
        raise SpoolError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o7777 != 0o700:
        posix.chmod(path, 0o700)


# stat.S_IFMT and stat.S_IFDIR (the same on every Linux).
_S_IFMT = 0o170000
_S_IFDIR = 0o040000


def file_path(directory: str, uuid: str, suffix: str) -> str:
    return join(directory, uuid + suffix)


def write_atomic(directory: str, uuid: str, suffix: str, data: bytes) -> str:
    """Write `data` as <uuid><suffix> in `directory`; readers see all of it or nothing."""
    ensure_dir(directory)
    final = file_path(directory, uuid, suffix)
    temporary = join(directory, f".{uuid}{suffix}.{posix.getpid()}.tmp")
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC
    fd = posix.open(temporary, flags, 0o600)
    try:
        with open(fd, "wb") as out:
            out.write(data)
        # No fsync: the directory is on tmpfs (/run), where it buys nothing.
        posix.replace(temporary, final)
    except BaseException:
        _unlink_quietly(temporary)
        raise
    return final


def read_file(path: str, limit: int | None = None) -> bytes | None:
    """The file's bytes (not following a symlink), None when it cannot be opened or
    holds more than `limit` bytes."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return None
    with open(fd, "rb") as source:
        data = source.read() if limit is None else source.read(limit + 1)
    return data if limit is None or len(data) <= limit else None


def read(directory: str, uuid: str, suffix: str) -> bytes | None:
    return read_file(file_path(directory, uuid, suffix))


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
        posix.unlink(path)
    except FileNotFoundError:
        return False
    return True
