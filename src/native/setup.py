"""vmhealth-fastlane: the native probe lane of vmhealth, an optional part of its own.

One C extension, the top-level module `vmhealth_fastlane` (fastlane.c), which
vmhealth.monitor.native_lane uses when it is installed (docs/packaging.md, "The
native lane"). vmhealth itself is pure Python (the setup.py at the top of the
repository) and runs every probe in Python without this.

    pip install ./src/native           # beside vmhealth, in the same environment

The extension parses HTTP with llhttp, the parser httptools also uses, taken from the
system, never from this repository:

- a shared llhttp found by pkg-config (Fedora/EPEL: llhttp-devel, `libllhttp.pc`);
- else llhttp's C sources as Debian ships them for building against (node-llhttp:
  /usr/share/llhttp/*.c, /usr/share/include/llhttp/llhttp.h), compiled in;
- LLHTTP_SOURCE_DIR / LLHTTP_INCLUDE_DIR point at sources elsewhere.

Without llhttp or a C compiler this build fails, naming what to install: building
this package is asking for the lane.

Its version is vmhealth's (src/vmhealth/__init__.py), compiled in as
`vmhealth_fastlane.__version__`: native_lane.py uses no lane of another version.

VMHEALTH_SANITIZE=1 builds the extension with AddressSanitizer and UBSan, for the
test command's sanitizer step (scripts/test): any memory error or undefined behaviour
then aborts the test run. Never for a package: the module needs libasan preloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
VERSION_FILE = HERE.parent / "vmhealth" / "__init__.py"
SOURCE = "fastlane.c"
SYSTEM_LLHTTP = [f"system_llhttp_{part}.c" for part in ("api", "http", "llhttp")]
DEBIAN_SOURCES = Path("/usr/share/llhttp")
DEBIAN_INCLUDE = Path("/usr/share/include/llhttp")
SANITIZE = os.environ.get("VMHEALTH_SANITIZE") == "1"
# -fno-sanitize-recover: undefined behaviour aborts, so the tests fail on it.
SANITIZER_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer", "-g"]


def _version() -> str:
    try:
        text = VERSION_FILE.read_text(encoding="utf-8")
    except OSError as exc:
        sys.exit(f"error: cannot read vmhealth's version from {VERSION_FILE} ({exc}): "
                 "build from a vmhealth source tree (src/native inside it)")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        sys.exit(f"error: no __version__ = \"...\" line in {VERSION_FILE}")
    return match.group(1)


def _pkg_config(*args: str) -> list[str] | None:
    if shutil.which("pkg-config") is None:
        return None
    try:
        out = subprocess.run(["pkg-config", *args, "libllhttp"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.split()


def _extension(version: str) -> Extension:
    common = {"extra_compile_args": ["-std=gnu11", "-O2", "-Wall",
                                     *(SANITIZER_FLAGS if SANITIZE else [])],
              "extra_link_args": SANITIZER_FLAGS if SANITIZE else [],
              # A C string literal; the version is digits and dots (checked above).
              "define_macros": [("VMHEALTH_VERSION", f'"{version}"')]}
    cflags, libs = _pkg_config("--cflags"), _pkg_config("--libs")
    if cflags is not None and libs is not None:
        return Extension(
            "vmhealth_fastlane", [SOURCE],
            include_dirs=[flag[2:] for flag in cflags if flag.startswith("-I")],
            library_dirs=[flag[2:] for flag in libs if flag.startswith("-L")],
            libraries=[flag[2:] for flag in libs if flag.startswith("-l")],
            **common)
    sources = Path(os.environ.get("LLHTTP_SOURCE_DIR", DEBIAN_SOURCES))
    include = Path(os.environ.get("LLHTTP_INCLUDE_DIR", DEBIAN_INCLUDE))
    parts = [sources / name for name in ("api.c", "http.c", "llhttp.c")]
    if all(part.is_file() for part in parts) and (include / "llhttp.h").is_file():
        # setuptools takes only relative source paths: system_llhttp_*.c include them.
        return Extension("vmhealth_fastlane", [SOURCE, *SYSTEM_LLHTTP],
                         include_dirs=[str(include), str(sources)], **common)
    sys.exit("error: llhttp not found (Debian: apt install node-llhttp; Fedora/EL: dnf "
             "install llhttp-devel; or set LLHTTP_SOURCE_DIR and LLHTTP_INCLUDE_DIR): "
             "the native probe lane cannot be built; vmhealth runs without it")


os.chdir(HERE)  # the sources are named relative to this directory
VERSION = _version()
if not re.fullmatch(r"[0-9]+(\.[0-9]+)*([a-z]+[0-9]*)?", VERSION):
    sys.exit(f"error: vmhealth's version {VERSION!r} is not of the form 1.2.3")
setup(
    name="vmhealth-fastlane",
    version=VERSION,
    description="The native probe lane of vmhealth (optional: repeats settled network "
                "probes in C)",
    license="Apache-2.0",
    python_requires=">=3.9",
    ext_modules=[_extension(VERSION)],
)
