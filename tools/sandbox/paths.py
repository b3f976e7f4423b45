"""Where the e2e harness keeps what it builds and what it logs."""

import os
import shutil
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# build/ is ignored by git; everything the harness writes goes below it
# ($VMHEALTH_E2E_BUILD moves it, e.g. to measure a cold start).
BUILD = Path(os.environ.get("VMHEALTH_E2E_BUILD", REPO / "build" / "e2e"))
IMAGES = BUILD / "images"
LOGS = BUILD / "logs"
LIBVIRT_CACHE = BUILD / "libvirt-cache"
KEEP_LOG_RUNS = 5


def new_log_dir(prefix: str) -> Path:
    """A fresh build/e2e/logs/<prefix>-<time>/ (and a <prefix>-latest link to it);
    only the newest KEEP_LOG_RUNS runs of each prefix are kept."""
    LOGS.mkdir(parents=True, exist_ok=True)
    runs = sorted(p for p in LOGS.glob(f"{prefix}-2*") if p.is_dir() and not p.is_symlink())
    for old in runs[: max(0, len(runs) - KEEP_LOG_RUNS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    log_dir = LOGS / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    log_dir.mkdir()
    latest = LOGS / f"{prefix}-latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(log_dir.name)
    return log_dir
