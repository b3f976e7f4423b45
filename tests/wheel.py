"""vmhealth's pure wheel, built from this tree, for the tests that install it somewhere
else (a clean virtual environment, a booted guest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 300  # seconds


def build_pure_wheel(target: Path) -> Path:
    """Build the wheel into `target` (emptied first) and return its path.

    Offline (no index, no build isolation: the test environment's setuptools) and
    without a C compiler (CC and CXX are /bin/false): vmhealth is pure Python, and the
    native lane is a package of its own (src/native)."""
    shutil.rmtree(target, ignore_errors=True)
    env = {**os.environ, "PIP_NO_INDEX": "1", "CC": "/bin/false", "CXX": "/bin/false"}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", str(target), str(REPO)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False, env=env)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    wheels = sorted(target.glob("vmhealth-*-py3-none-any.whl"))
    assert len(wheels) == 1, sorted(path.name for path in target.iterdir())
    return wheels[0]
