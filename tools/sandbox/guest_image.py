"""The e2e guest: Debian's kernel and an initramfs built from installed Debian packages.

The initramfs holds busybox-static, qemu-ga with the shared libraries ldd names, the
kernel modules the guest needs (in modules.dep order) and guest_init.sh as /init.
It is cached under build/e2e/images/<key>/, where key hashes the package versions, the
init script and this builder, so a package upgrade or an init change rebuilds it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import paths

INIT_SCRIPT = Path(__file__).with_name("guest_init.sh")
BUSYBOX = Path("/bin/busybox")
QEMU_GA = Path("/usr/sbin/qemu-ga")
PACKAGES = ("busybox-static", "qemu-guest-agent")
# Leaf modules the guest needs; their dependencies come from modules.dep.
MODULES = ("virtio_pci", "virtio_console", "virtio_net", "i6300esb")


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def _package_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"Debian package {package} is not installed (scripts/install-deps)")
    return result.stdout


def find_kernel() -> tuple[str, Path]:
    """The newest /boot/vmlinuz-* whose modules are installed."""
    found = []
    for kernel in Path("/boot").glob("vmlinuz-*"):
        version = kernel.name[len("vmlinuz-") :]
        if (Path("/usr/lib/modules") / version / "modules.dep").exists():
            found.append((version, kernel))
    if not found:
        raise RuntimeError("no kernel with modules in /boot: install linux-image-amd64")
    # Debian versions like 6.1.0-56-amd64 sort correctly by their numeric parts.
    found.sort(key=lambda item: [int(n) for n in re.findall(r"\d+", item[0])])
    return found[-1]


def module_order(modules_dir: Path, wanted: tuple[str, ...]) -> list[str]:
    """Relative .ko paths for wanted and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        name = Path(target).name.split(".ko")[0].replace("-", "_")
        by_name[name] = target
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise RuntimeError(f"kernel module {name} not found in {modules_dir}")
        visit(by_name[name])
    return order


def _shared_libraries(binary: Path) -> list[Path]:
    result = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=True
    )
    libs = []
    for line in result.stdout.splitlines():
        # "libfoo.so.1 => /lib/.../libfoo.so.1 (0x...)" or "/lib64/ld-linux... (0x...)"
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _cache_key(kernel_version: str) -> str:
    digest = hashlib.sha256()
    for package in (*PACKAGES, f"linux-image-{kernel_version}"):
        digest.update(f"{package}={_package_version(package)}\n".encode())
    digest.update(",".join(MODULES).encode())
    digest.update(INIT_SCRIPT.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


def _copy_into(root: Path, source: Path) -> None:
    target = root / source.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Follow symlinks: the image needs the library itself under the name ldd printed.
    shutil.copy2(source, target, follow_symlinks=True)


def _populate(root: Path, kernel_version: str) -> None:
    for binary in (BUSYBOX, QEMU_GA):
        _copy_into(root, binary)
    for lib in _shared_libraries(QEMU_GA):
        _copy_into(root, lib)
    modules_dir = Path("/usr/lib/modules") / kernel_version
    order = module_order(modules_dir, MODULES)
    for module in order:
        source = modules_dir / module
        if source.suffix != ".ko":
            # A compressed module would need a decompressing insmod; Debian 12 ships
            # plain .ko files, so fail loudly rather than boot a guest without them.
            raise RuntimeError(f"unsupported module format: {source}")
        target = root / "lib" / "modules" / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "vmh-modules").write_text("".join(f"{m}\n" for m in order))
    shutil.copy2(INIT_SCRIPT, root / "init")
    (root / "init").chmod(0o755)
    # Debian's usrmerge: /lib and /lib64 are links into /usr on the host, but the
    # image only holds the copied paths, which is what ldd printed.


def _write_cpio(root: Path, output: Path) -> None:
    names = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    listing = ("\n".join(names) + "\n").encode()
    result = subprocess.run(
        ["cpio", "--quiet", "--create", "--format=newc", "--reproducible"],
        input=listing,
        capture_output=True,
        cwd=root,
        timeout=120,
        check=True,
    )
    # mtime=0: the same inputs give the same bytes.
    with gzip.GzipFile(output, "wb", compresslevel=6, mtime=0) as compressed:
        compressed.write(result.stdout)


def build(cache: Path = paths.IMAGES) -> GuestImage:
    """Return the cached image, building it first if needed."""
    kernel_version, kernel = find_kernel()
    final = cache / _cache_key(kernel_version)
    initrd = final / "initrd.gz"
    if not initrd.exists():
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
        try:
            root = work / "root"
            root.mkdir()
            _populate(root, kernel_version)
            _write_cpio(root, work / "initrd.gz")
            shutil.rmtree(root)
            try:
                # Atomic: a concurrent build (tests and demo at once) loses the race
                # harmlessly.
                os.rename(work, final)
            except OSError:
                if not initrd.exists():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=kernel_version)


if __name__ == "__main__":
    print(build())
