"""The seam between the probe engine and the daemon that drives it.

The probe engine (probe handlers and the per-domain state machine) knows nothing of
libvirt: it reaches a guest only through `GuestAccess`, which the daemon implements
with libvirt (and tests and benchmarks implement with small fakes). It reports what it
learns through `ProbeListener`, which the daemon turns into readiness, liveness
actions, events and metrics. Between the handlers and the prober, a `ProbeStarter` runs
one probe and says, through `Recipe`, what the native lane (native_lane.py) may repeat.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Protocol

from vmhealth.spec import ProbeKind


class Outcome(str, enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # a clean negative answer: refused, HTTP 500, exit code 1, timeout
    ERROR = "error"  # the probe could not be run at all; retried, never counted
    # Not run: this guest's previous agent call is still in flight (one at a time per
    # guest, so one slow agent holds one thread, never more). Neither counted nor retried.
    SKIPPED = "skipped"


class ProbeResult(NamedTuple):
    """One probe run. A named tuple, not a dataclass: one is made for each of the ~2,000
    probes a second a large host runs, and a tuple is built several times faster."""

    outcome: Outcome
    message: str  # short, operator-facing; never contains HTTP header values
    duration: float  # seconds the probe took
    started_at: float  # time.time() when the probe started


OnDone = Callable[[ProbeResult], None]
# Stops a run; returns the task still unwinding, if any (for a bounded wait).
Cancel = Callable[[], Optional[asyncio.Task]]


class Recipe(NamedTuple):
    """The exchange a settled probe repeats: made by a network handler on a success,
    run by the native lane (native_lane.py) until its answer differs."""

    host: str  # an IP literal: the first address tried, which answered
    port: int
    request: bytes | None  # None: tcpSocket
    status: int  # the HTTP status to expect (0 for tcpSocket)
    message: str  # the success message the Python handler gave
    from_cache: bool  # host came from the guest's cached addresses (not the spec)
    timeout_message: str  # the FAILURE the handler reports when no answer comes in time


class AgentError(Exception):
    """The guest agent answered with an error (e.g. a command it refuses)."""

    def __init__(self, message: str, *, error_class: str = "", blocked: bool = False) -> None:
        super().__init__(message)
        self.error_class = error_class
        # True when the agent refused because the RPC is disabled (block/allow list).
        self.blocked = blocked


class AgentUnavailable(Exception):
    """No agent to talk to: not connected, not running, or it did not answer within the
    call's timeout, as libvirt measured it on the agent itself (KubeVirt: "if the guest
    agent is not available, this probe will fail")."""


class AgentBusy(Exception):
    """This guest's previous agent call has not returned yet: the probe is not run."""


class NoVerdict(Exception):
    """The host could not answer: an agent call got no answer from libvirt in time (the
    daemon's agent threads or libvirtd busy with other guests), or libvirt could not be
    asked for the guest's addresses. It says nothing about this guest, so it is an ERROR
    (never counted): counting it would let one guest's slow agent fail another."""


# libvirt sends guest-sync before every agent command and waits up to this long for it
# (min(the domain's agent response timeout, 5 s)): a call can take that long on top of
# its own timeout before libvirt gives its verdict.
AGENT_SYNC_SECONDS = 5


class GuestAccess(Protocol):
    """How probes reach one guest. Implemented by the daemon with libvirt."""

    name: str  # the domain's name, for messages

    async def addresses(self) -> list[str]:
        """The guest's IP addresses (IPv4 and IPv6), best first; may be cached."""

    def cached_addresses(self) -> list[str] | None:
        """The addresses addresses() would return right now without waiting, or None
        when it would have to look them up (stale or never read): the probes' fast path
        asks this first and awaits addresses() only on None."""

    async def agent_command(self, command: dict[str, Any], timeout: float) -> Any:
        """Send one QMP-style guest agent command; return its "return" value.

        Raises AgentUnavailable (the agent is not there or did not answer within
        `timeout`, measured by libvirt on the agent), AgentError (it answered with an
        error), AgentBusy (this guest's previous call is still in flight: nothing was
        sent) or NoVerdict (no answer from libvirt in time: the host was busy).
        Never blocks the event loop.
        """

    def addresses_valid_until(self) -> float:
        """Monotonic time until which cached_addresses() stays what it is now: a probe
        the native lane repeats against a cached address is handed back to Python then,
        so the addresses are looked up again (native_lane.py)."""

    def suppression_reason(self) -> str | None:
        """Why failures must not count right now (paused, migrating, saving...), or None."""


class ProbeStarter(Protocol):
    """Runs one probe (vmhealth.monitor.probes.starter_for makes one per probe).

    `starter(access, on_done)` starts a run and returns its `Cancel`; `on_done(result)`
    is called exactly once, never before the starter returns and never after cancel().
    """

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Cancel: ...

    @property
    def repeatable(self) -> Recipe | None:
        """What the native lane may repeat after the last finished run, if it was a
        success; None when it may repeat nothing (always, for most handlers)."""


@dataclass(frozen=True)
class StateChange:
    """A published state flip of one probe kind for one domain."""

    kind: ProbeKind
    healthy: bool | None  # None = unknown (not probed yet)
    reason: str
    result: ProbeResult | None


class ProbeListener(Protocol):
    def on_result(self, kind: ProbeKind, result: ProbeResult, *, counted: bool) -> None:
        """Every probe run (for metrics and `status`); counted=False when suppressed."""

    def on_repeated_successes(self, kind: ProbeKind, last: ProbeResult, count: int,
                              buckets: tuple[int, ...], seconds: float) -> None:
        """`count` counted successes the native lane repeated (the same answer as the
        result that settled the probe); `last` is the latest; `buckets` counts their
        durations per metrics.DURATION_BUCKETS (the last one +Inf), `seconds` sums them."""

    def on_state_change(self, change: StateChange) -> None:
        """Readiness/liveness/startup flipped after crossing its threshold."""

    def on_liveness_failed(self, result: ProbeResult) -> None:
        """Liveness (or startup) crossed failureThreshold: take the action once."""
