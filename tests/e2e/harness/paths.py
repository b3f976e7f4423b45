"""Where the e2e harness keeps what it builds and what it logs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
# build/ is ignored by git; everything the harness writes goes below it.
BUILD = REPO / "build" / "e2e"
IMAGES = BUILD / "images"
LOGS = BUILD / "logs"
LIBVIRT_CACHE = BUILD / "libvirt-cache"
