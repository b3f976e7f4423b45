"""The demo (scripts/demo) as a smoke run: every step happens, in order, and it ends.

The demo starts a sandbox of its own (nested namespaces inside the suite's), so it
runs as a subprocess: its main re-executes itself under unshare, which would replace
pytest.  --smoke ends it after the last step instead of waiting for Ctrl-C.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tools.demo.demo import STEPS
from tools.sandbox import paths

# The demo takes about 40 s on an idle 2-core machine; the bound is for a loaded one.
DEMO_TIMEOUT = 600


def _index(lines: list[str], pattern: str, start: int, what: str, transcript: str) -> int:
    for index in range(start, len(lines)):
        if re.search(pattern, lines[index]):
            return index
    raise AssertionError(f"the demo's transcript has no {what} /{pattern}/ after line "
                         f"{start}:\n{transcript}")


def test_demo_smoke_run_shows_every_step(e2e_environment):
    result = subprocess.run([sys.executable, "-m", "tools.demo", "--smoke"],
                            cwd=str(paths.REPO), capture_output=True, text=True,
                            timeout=DEMO_TIMEOUT, check=False)
    transcript = result.stdout + result.stderr
    print(transcript)
    assert result.returncode == 0, transcript
    lines = transcript.splitlines()
    at = 0
    for number, (heading, outcome) in enumerate(STEPS, 1):
        at = _index(lines, rf"== {number:2d}\. .*{re.escape(heading)}", at,
                    f"heading of step {number}", transcript)
        at = _index(lines, outcome, at + 1, f"outcome of step {number}", transcript)
    at = _index(lines, r"\] demo complete$", at + 1, "end", transcript)
    _index(lines, r"/etc/passwd, /etc/group: unchanged$", at + 1, "host check", transcript)
