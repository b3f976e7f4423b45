"""The one definition of "running in CI" for every test (.ci/run exports CI=true).

Under CI a missing tool or input is a failure, never a skip: a green CI run must
have run everything. Elsewhere (a developer without the packages) it is a skip.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "") == "true"


def missing(reason: str) -> None:
    """Fail under CI, skip elsewhere: `reason` names what is missing and the fix."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The tool's path; in CI a missing tool fails the test, elsewhere skips it."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian: see scripts/debian-packages.txt)")
    return path
