"""Polling with a deadline: the one way the harness waits for anything."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError so pytest shows it plainly)."""


class GiveUp(Exception):
    """Raised by a probe when waiting longer cannot help (e.g. the daemon died)."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Call probe until it returns something truthy; return that value.

    Exceptions from probe count as "not yet"; the last one is reported on timeout, so
    a guest that never answers shows why.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - retried, then reported below
            last_error = exc
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)
