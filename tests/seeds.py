"""Find the YAML examples in the KubeVirt documents under ../shared/seeds.

The seeds are prose with manifests embedded three ways: flush left between
paragraphs, indented by four spaces (reStructuredText-like), or inside a
`cat <<EOF | kubectl apply -f -` block. An example starts at a line
`apiVersion: ...` and runs while lines are indented deeper than it, or sit at its
indentation and look like YAML keys; the first line that does not ends it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY_LINE = re.compile(r"^[A-Za-z_][\w.-]*:(\s|$)")
END_MARKERS = ("EOF", "```")


def seeds_dir() -> Path:
    """$VMHEALTH_SEEDS, else ../shared/seeds beside the repository, else beside the
    checkout this one was cloned from (a fresh clone in /tmp has no ../shared)."""
    if "VMHEALTH_SEEDS" in os.environ:
        return Path(os.environ["VMHEALTH_SEEDS"])
    beside = REPO.parent / "shared" / "seeds"
    origin = _local_origin()
    if not beside.is_dir() and origin is not None:
        return origin.parent / "shared" / "seeds"
    return beside


def _local_origin() -> Path | None:
    """The directory this repository was cloned from, when that is a local path."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    url = url.strip().removeprefix("file://")
    return Path(url).resolve() if url.startswith("/") else None


def extract_examples(text: str) -> list[str]:
    lines = text.splitlines()
    examples = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.lstrip(" ")
        if not stripped.startswith("apiVersion:"):
            index += 1
            continue
        indent = len(line) - len(stripped)
        block = [line[indent:]]
        index += 1
        while index < len(lines):
            current = lines[index]
            body = current.lstrip(" ")
            depth = len(current) - len(body)
            if body.strip() in END_MARKERS:
                break
            if body == "" or depth > indent or (depth == indent and KEY_LINE.match(body)):
                block.append(current[indent:] if len(current) >= indent else "")
                index += 1
                continue
            break
        examples.append("\n".join(block).rstrip() + "\n")
    return examples


def seed_examples() -> list[tuple[str, int, str]]:
    """(seed file name, 1-based example number, YAML text) for every seed example."""
    found = []
    for path in sorted(seeds_dir().glob("*.txt")):
        for number, example in enumerate(extract_examples(path.read_text("utf-8")), 1):
            found.append((path.name, number, example))
    return found
