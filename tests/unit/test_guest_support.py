"""Helpers shared by the guest and cloud-init tests (this module holds no tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.ci import missing

REPO = Path(__file__).resolve().parents[2]
GUEST_DATA = REPO / "tests" / "data" / "guest"
ROOTS = GUEST_DATA / "roots"
KUBEVIRT = GUEST_DATA / "kubevirt"


def require_tool(name: str) -> str:
    """The tool's path; in CI (CI=true) a missing tool fails the test, elsewhere skips it."""
    path = shutil.which(name)
    if path is None:
        message = (f"{name} is not installed (Debian: see scripts/debian-packages.txt)")
        missing(message)
    return path


def copy_root(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(ROOTS / name, root, symlinks=True)
    return root
