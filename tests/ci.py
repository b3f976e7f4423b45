"""The one definition of "running in CI" for every test (.ci/run exports CI=true).

Under CI a missing tool or input is a failure, never a skip: a green CI run must
have run everything. Elsewhere (a developer without the packages) it is a skip.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "") == "true"


def missing(reason: str, *, module_level: bool = False) -> None:
    """Fail under CI, skip elsewhere: `reason` names what is missing and the fix.
    `module_level`: called while a test module is imported (skips the whole module)."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


NO_LANE = ("the native lane (vmhealth_fastlane) is not built: pip install ./src/native "
           "(scripts/install-deps builds it; docs/packaging.md)")


def require_module(name: str, reason: str) -> ModuleType:
    """Import `name` for a test module; without it the module fails under CI (a CI run
    that skipped the native lane's tests would be green without testing it) and is
    skipped elsewhere. Use at module level, like pytest.importorskip."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{reason} ({exc})", module_level=True)
        raise  # not reached: missing() raises


def require_tool(name: str) -> str:
    """The tool's path; in CI a missing tool fails the test, elsewhere skips it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian: see scripts/debian-packages.txt)")
    return path
