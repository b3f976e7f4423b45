"""Paths and roots shared by the guest and cloud-init tests (a helper module, no tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST_DATA = REPO / "tests" / "data" / "guest"
ROOTS = GUEST_DATA / "roots"
KUBEVIRT = GUEST_DATA / "kubevirt"


def copy_root(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(ROOTS / name, root, symlinks=True)
    return root
