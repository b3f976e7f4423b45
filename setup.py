"""Build of the native probe lane, vmhealth._fastlane (everything else is in setup.cfg).

The extension parses HTTP with llhttp, the parser httptools also uses, taken from the
system, never from this repository:

- a shared llhttp found by pkg-config (Fedora/EPEL: llhttp-devel, `libllhttp.pc`);
- else llhttp's C sources as Debian ships them for building against (node-llhttp:
  /usr/share/llhttp/*.c, /usr/share/include/llhttp/llhttp.h), compiled in;
- LLHTTP_SOURCE_DIR / LLHTTP_INCLUDE_DIR point at sources elsewhere.

Without llhttp, or when the compiler fails, vmhealth installs without the extension
and the daemon runs every probe in Python (docs/probes.md, "The native lane"); set
VMHEALTH_REQUIRE_NATIVE=1 to make that a build error instead (the RPM and the test
command do).

VMHEALTH_SANITIZE=1 builds the extension with AddressSanitizer and UBSan, for the
test command's sanitizer step (scripts/test): any memory error or undefined behaviour
then aborts the test run. Never for a package: the module needs libasan preloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "src/native/fastlane.c"
SYSTEM_LLHTTP = [f"src/native/system_llhttp_{part}.c" for part in ("api", "http", "llhttp")]
DEBIAN_SOURCES = Path("/usr/share/llhttp")
DEBIAN_INCLUDE = Path("/usr/share/include/llhttp")
REQUIRED = os.environ.get("VMHEALTH_REQUIRE_NATIVE") == "1"
SANITIZE = os.environ.get("VMHEALTH_SANITIZE") == "1"
# -fno-sanitize-recover: undefined behaviour aborts, so the tests fail on it.
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-g"]


def _pkg_config(*args: str) -> list[str] | None:
    if shutil.which("pkg-config") is None:
        return None
    try:
        out = subprocess.run(["pkg-config", *args, "libllhttp"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split()


def _extension() -> Extension | None:
    common = {"extra_compile_args": ["-std=gnu11", "-O2", "-Wall",
                                     *(SANITIZER_FLAGS if SANITIZE else [])],
              "extra_link_args": SANITIZER_FLAGS if SANITIZE else [],
              "optional": not (REQUIRED or SANITIZE)}
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is not None and libs is not None:
        return Extension(
            "vmhealth._fastlane", [SOURCE],
            include_dirs=[flag[2:] for flag in cflags if flag.startswith("-I")],
            library_dirs=[flag[2:] for flag in libs if flag.startswith("-L")],
            libraries=[flag[2:] for flag in libs if flag.startswith("-l")],
            **common)
    sources = Path(os.environ.get("LLHTTP_SOURCE_DIR", DEBIAN_SOURCES))
    include = Path(os.environ.get("LLHTTP_INCLUDE_DIR", DEBIAN_INCLUDE))
    parts = [sources / name for name in ("api.c", "http.c", "llhttp.c")]
    if all(part.is_file() for part in parts) and (include / "llhttp.h").is_file():
        # setuptools takes only relative source paths: system_llhttp_*.c include them.
        return Extension("vmhealth._fastlane", [SOURCE, *SYSTEM_LLHTTP],
                         include_dirs=[str(include), str(sources)], **common)
    message = ("llhttp not found (Debian: apt install node-llhttp; Fedora/EL: dnf install "
               "llhttp-devel): building vmhealth without its native probe lane")
    if REQUIRED:
        sys.exit(f"error: {message}")
    print(f"warning: {message}", file=sys.stderr)
    return None


extension = _extension()
setup(ext_modules=[extension] if extension is not None else [])
