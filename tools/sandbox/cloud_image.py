"""A Debian 12 cloud guest image, built here from Debian packages, and its package mirror.

The image is what a fresh cloud image is: systemd, Debian's kernel, cloud-init and apt,
and nothing vmhealth needs. qemu-guest-agent and watchdog are not installed; the user
data `vmhealth cloudinit render` writes must install them. The guest has no internet,
so the build also downloads the .deb files those two packages need beyond the image
(apt-get --download-only inside the image, i.e. exactly what the guest's apt will ask
for) into a flat, trusted apt repository. `serve_mirror()` serves it over HTTP on the
sandbox bridge, with any extra file (the test's vmhealth wheel), and the image's only
apt source points there.

So that `vmhealth guest check` can run inside the guest, the image also carries what
installing vmhealth's wheel needs on Debian (its dependencies as Debian packages, and
pip), installed with the command docs/guest.md gives; vmhealth itself is not in it.
Installing them at first boot instead cost 46 s under TCG, more than the e2e test's
time budget leaves.

Built with mmdebstrap into a directory, written into an ext4 file system with
`mkfs.ext4 -d` and converted to qcow2. The guest boots the image's own kernel and
initramfs directly (root=/dev/vda), so the disk needs no partition table and no
bootloader. Cached under build/e2e/images/cloud-<key>/: the key hashes this builder and
the versions the host's apt offers for the packages, and key.txt next to the image
lists them (versions.txt: what the image and the mirror really hold).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .guest_image import GuestImage
from .sandbox import Bridge

SUITE = "bookworm"
# The sources the host's apt uses (/etc/apt/sources.list.d/debian.sources), so that the
# key's versions (the host's candidates) are the ones the image gets.
DEBIAN_SOURCES = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)
IMAGE_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "linux-image-amd64", "cloud-init", "python3",
    # cloud-init's Debian renderer (eni) writes /etc/network/interfaces.d/ for ifupdown.
    "ifupdown", "netbase", "sudo", "apt",
    # resize2fs for cloud-init's resizefs, fsck for the initramfs.
    "e2fsprogs",
)
# What the rendered user data installs; served by the local mirror, not in the image.
MIRROR_PACKAGES = ("qemu-guest-agent", "watchdog")
# What installing vmhealth's wheel in the guest needs (docs/guest.md, "vmhealth in a
# Debian guest"): its install_requires as Debian packages, and pip for the wheel.
# In the image, installed without recommends (python3-pip recommends a compiler).
WHEEL_PACKAGES = ("python3-click", "python3-psutil", "python3-lxml", "python3-yaml",
                  "python3-pip")
MIRROR_PORT = 3142
MIRROR_HOST = Bridge().ipv4
DISK_SIZE = "3G"


def mirror_url(name: str = "") -> str:
    """The URL of a file the mirror serves, as the guest reaches it."""
    return f"http://{MIRROR_HOST}:{MIRROR_PORT}/{name}"


# Only this source: the guest reaches nothing else (no internet in the sandbox).
SOURCES_LIST = f"deb [trusted=yes] {mirror_url()} ./\n"
# System cloud-init settings of the image (user data can still override them):
# NoCloud only (ds-identify then needs no probing), and no network wait for a
# metadata service that does not exist.
CLOUD_CFG = """\
# vmhealth e2e cloud image: the seed is a NoCloud ISO (label cidata)
datasource_list: [NoCloud, None]
"""
FSTAB = "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n"
# As Debian's cloud images: cloud-init's locale module then has nothing to generate
# (the image has no other locale).
DEFAULT_LOCALE = "LANG=C.UTF-8\n"
BUILD_TIMEOUT = 900
# What the initramfs needs to mount root=/dev/vda (their dependencies come along).
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")
# The e2e test that boots the image; tests/e2e/run builds the image first when the
# selection includes it (the sandbox has no network).
SELECTING_TEST = "tests/e2e/test_cloudinit_boot.py"
FAILED_LOG = "cloud-failed.log"  # in the image cache: the last failed build's log


@dataclass(frozen=True)
class CloudImage:
    disk: Path  # qcow2; guests boot copy-on-write overlays of it, never the image itself
    boot: GuestImage  # the image's own kernel and initramfs, for direct kernel boot
    mirror: Path  # flat apt repository: *.deb, Packages, Release
    directory: Path

    @property
    def mirror_packages(self) -> list[str]:
        return sorted(p.name for p in self.mirror.glob("*.deb"))


def _candidate_versions(packages: tuple[str, ...]) -> list[str]:
    """`name=version` of what the host's apt would install (its own package lists)."""
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages],
        capture_output=True, text=True, timeout=60, check=False)
    versions = []
    name = None
    for line in result.stdout.splitlines():
        if line.startswith("Package: "):
            name = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and name:
            versions.append(f"{name}={line.split(': ', 1)[1]}")
            name = None
    return versions


def cache_key() -> tuple[str, str]:
    """(key, key file text): the builder's bytes and the packages' versions."""
    lines = [*DEBIAN_SOURCES,
             *_candidate_versions(IMAGE_PACKAGES + MIRROR_PACKAGES + WHEEL_PACKAGES)]
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha256(text.encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16], text


def _run(argv: list[str], log: Path, timeout: float = BUILD_TIMEOUT) -> None:
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}); see {log}")


def _mmdebstrap(root: Path, mirror: Path, config: Path, log: Path) -> None:
    """Bootstrap into root; download the mirror's .deb files from inside the image."""
    mirror_dir, config_dir = shlex.quote(str(mirror)), shlex.quote(str(config))
    # mmdebstrap runs each hook with sh -c; "$1" is the root directory.
    hooks = [
        'chroot "$1" apt-get install --yes --no-install-recommends '
        + " ".join(shlex.quote(name) for name in WHEEL_PACKAGES),
        # What the guest's apt will fetch: the same apt, configuration and installed
        # set as at first boot, so the mirror holds exactly the missing dependencies.
        'chroot "$1" apt-get clean',
        'chroot "$1" apt-get install --yes --download-only '
        + " ".join(shlex.quote(name) for name in MIRROR_PACKAGES),
        f'cp "$1"/var/cache/apt/archives/*.deb {mirror_dir}/',
        'chroot "$1" apt-get clean',
        'rm -rf "$1"/var/lib/apt/lists/*',
        # The guest's own configuration (files staged next to the root).
        f'cp {config_dir}/sources.list "$1"/etc/apt/sources.list',
        f'cp {config_dir}/90-vmhealth-e2e.cfg "$1"/etc/cloud/cloud.cfg.d/',
        f'cp {config_dir}/fstab "$1"/etc/fstab',
        f'cp {config_dir}/locale "$1"/etc/default/locale',
        # A small initramfs (Debian's MODULES=most is 36 MB): only what mounts the root
        # disk; udev loads everything else from the root file system. Faster under TCG.
        f'cp {config_dir}/initramfs.conf "$1"/etc/initramfs-tools/conf.d/vmhealth-e2e',
        f'cat {config_dir}/initramfs-modules >> "$1"/etc/initramfs-tools/modules',
        'chroot "$1" update-initramfs -u -k all',
        'rm -f "$1"/etc/hostname',  # cloud-init sets it from meta-data
        # Every boot of the image is a fresh machine: systemd makes the id.
        'truncate -s 0 "$1"/etc/machine-id',
    ]
    argv = ["mmdebstrap", "--variant=apt", "--mode=root",
            "--include=" + ",".join(IMAGE_PACKAGES),
            # Smaller image, faster mkfs and boot: no manuals or docs in a test guest.
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    argv += [f"--customize-hook={hook}" for hook in hooks]
    argv += [SUITE, str(root), *DEBIAN_SOURCES]
    _run(argv, log)


def _write_repository(mirror: Path, log: Path) -> None:
    """Packages (dpkg-scanpackages) and a Release that names its hash: a flat repository
    apt accepts with [trusted=yes]."""
    with open(log, "ab") as err:
        packages = subprocess.run(["dpkg-scanpackages", "--multiversion", "."],
                                  cwd=mirror, capture_output=False, stdout=subprocess.PIPE,
                                  stderr=err, timeout=120, check=True).stdout
    (mirror / "Packages").write_bytes(packages)
    release = (
        "Origin: vmhealth-e2e\nLabel: vmhealth-e2e\nSuite: local\nCodename: local\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\n"
        f"SHA256:\n {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    (mirror / "Release").write_text(release)


def _boot_files(root: Path, target: Path) -> GuestImage:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the image's /boot, found {kernels}")
    version = kernels[0].name[len("vmlinuz-"):]
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.exists():
        raise RuntimeError(f"the image has no initramfs for {version}")
    shutil.copyfile(kernels[0], target / "vmlinuz")
    shutil.copyfile(initrd, target / "initrd.img")
    (target / "kernel-version").write_text(version + "\n")
    return GuestImage(kernel=target / "vmlinuz", initrd=target / "initrd.img",
                      kernel_version=version)


def _versions(root: Path) -> str:
    result = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f",
         "${Package}=${Version}\n"], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def _build_into(work: Path, key_text: str) -> None:
    log = work / "build.log"
    root, mirror, config = work / "root", work / "mirror", work / "config"
    for directory in (mirror, config):
        directory.mkdir()
    (config / "sources.list").write_text(SOURCES_LIST)
    (config / "90-vmhealth-e2e.cfg").write_text(CLOUD_CFG)
    (config / "fstab").write_text(FSTAB)
    (config / "locale").write_text(DEFAULT_LOCALE)
    (config / "initramfs.conf").write_text("MODULES=list\n")
    (config / "initramfs-modules").write_text("".join(f"{m}\n" for m in INITRAMFS_MODULES))
    _mmdebstrap(root, mirror, config, log)
    _write_repository(mirror, log)
    _boot_files(root, work)
    (work / "versions.txt").write_text(
        "# image\n" + _versions(root) + "# mirror\n"
        + "".join(f"{name}\n" for name in sorted(p.name for p in mirror.glob("*.deb"))))
    raw = work / "disk.raw"
    _run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(raw), DISK_SIZE], log)
    shutil.rmtree(root)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
          str(work / "disk.qcow2")], log)
    raw.unlink()
    (work / "key.txt").write_text(key_text)


def _loaded(directory: Path) -> CloudImage:
    version = (directory / "kernel-version").read_text().strip()
    return CloudImage(
        disk=directory / "disk.qcow2",
        boot=GuestImage(kernel=directory / "vmlinuz", initrd=directory / "initrd.img",
                        kernel_version=version),
        mirror=directory / "mirror", directory=directory)


def build(cache: Path = paths.IMAGES) -> CloudImage:
    """Return the cached image, building it first if needed (root, network, minutes)."""
    key, key_text = cache_key()
    final = cache / f"cloud-{key}"
    if not (final / "key.txt").exists():
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-cloud-", dir=cache))
        try:
            _build_into(work, key_text)
            try:
                os.rename(work, final)  # atomic; a concurrent build loses harmlessly
            except OSError:
                if not (final / "key.txt").exists():
                    raise
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            # The work directory goes; its log stays where the message points.
            failed = cache / FAILED_LOG
            if (work / "build.log").exists():
                shutil.copyfile(work / "build.log", failed)
            raise RuntimeError(f"{exc} (log kept as {failed})") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _loaded(final)


def cached() -> CloudImage | None:
    """The image for the current key if it is built (inside the sandbox, which has no
    network, nothing can be built)."""
    final = paths.IMAGES / f"cloud-{cache_key()[0]}"
    return _loaded(final) if (final / "key.txt").exists() else None


def build_if_selected(args: list[str]) -> None:
    """Build the image before tests/e2e/run enters the sandbox's network namespace,
    when the pytest arguments select the test that boots it. Any failure is left for
    that test to report (with the build log)."""
    wanted = (paths.REPO / SELECTING_TEST).resolve()
    selected = [(paths.REPO / arg.split("::")[0]).resolve() for arg in args
                if not arg.startswith("-") and (paths.REPO / arg.split("::")[0]).exists()]
    if not any(path == wanted or path in wanted.parents for path in selected):
        return
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        return  # the test says what is missing
    started = time.monotonic()
    try:
        image = build()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"e2e: the cloud image did not build: {exc}", file=sys.stderr)
        return
    print(f"e2e: cloud image {image.directory.name} ready in "
          f"{time.monotonic() - started:.1f}s", file=sys.stderr)


def overlay(image: CloudImage, target: Path) -> Path:
    """A fresh copy-on-write disk over the cached image, for one guest."""
    target.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(image.disk), str(target)], check=True, timeout=60)
    return target


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.requests.append(format % args)  # type: ignore[attr-defined]

    def translate_path(self, path: str) -> str:
        # Extra files are served at /<name>, beside the mirror's own.
        extras = self.server.extra  # type: ignore[attr-defined]
        extra = extras.get(path.split("?", 1)[0].lstrip("/"))
        return str(extra) if extra is not None else super().translate_path(path)


@contextlib.contextmanager
def serve_mirror(image: CloudImage, host: str = MIRROR_HOST, port: int = MIRROR_PORT,
                 extra: tuple[Path, ...] = ()) -> Iterator[list[str]]:
    """Serve the image's mirror over HTTP on the sandbox bridge while the block runs,
    and each `extra` file at /<its name>; yields the list of requests served (one line
    each, as http.server logs them)."""
    handler = functools.partial(_QuietHandler, directory=str(image.mirror))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.requests = []  # type: ignore[attr-defined]
    server.extra = {path.name: path for path in extra}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="e2e-mirror", daemon=True)
    thread.start()
    try:
        yield server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


if __name__ == "__main__":
    started = time.monotonic()
    built = build()
    print(f"{built} in {time.monotonic() - started:.1f}s")
