"""Golden-file comparison with a regenerate switch.

VMHEALTH_REGEN_GOLDEN=1 rewrites golden files from the current output; without it a
missing golden file is a failure (so CI cannot pass by generating its own answers).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.ci import in_ci


def check_golden(path: Path, actual: str) -> None:
    if os.environ.get("VMHEALTH_REGEN_GOLDEN") == "1" and not in_ci():
        path.write_text(actual)
        return
    if not path.exists():
        raise AssertionError(f"golden file {path} is missing; create it with "
                             "VMHEALTH_REGEN_GOLDEN=1 pytest ... and review it")
    expected = path.read_text()
    assert actual == expected, f"output differs from {path} (VMHEALTH_REGEN_GOLDEN=1 " \
                               "regenerates it; review the diff)"
