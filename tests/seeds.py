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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY_LINE = re.compile(r"^[A-Za-z_][\w.-]*:(\s|$)")
END_MARKERS = ("EOF", "```")


def seeds_dir() -> Path:
    """../shared/seeds beside the repository (where CI puts it), or $VMHEALTH_SEEDS."""
    return Path(os.environ.get("VMHEALTH_SEEDS", REPO.parent / "shared" / "seeds"))


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
