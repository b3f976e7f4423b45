"""The one definition of "running in CI" for every test (.ci/run exports CI=true).

Under CI a missing tool or input is a failure, never a skip: a green CI run must
have run everything. Elsewhere (a developer without the packages) it is a skip.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "") == "true"


def missing(reason: str) -> None:
    """Fail under CI, skip elsewhere: `reason` names what is missing and the fix."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
