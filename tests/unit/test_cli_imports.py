"""Each command module of the CLI imports on its own (no import cycle through cli.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["vmhealth.cli_guest", "vmhealth.cli_daemon",
                                    "vmhealth.cli_hook", "vmhealth.cli_context",
                                    "vmhealth.cli"])
def test_the_module_imports_first_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
