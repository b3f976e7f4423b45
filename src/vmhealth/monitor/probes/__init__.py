"""Probe handlers: one module per handler; `starter_for` and `run_probe` pick the right one.

Each handler reproduces kubelet/KubeVirt (docs/probes.md) ("Handlers") and
reaches the guest only through GuestAccess (see vmhealth.monitor.interfaces).

The prober runs probes through starters (interfaces.ProbeStarter): `starter_for(probe)`
is made once per probe and then called for every run as `starter(access, on_done)`. It
returns `cancel`; `on_done(result)` is called exactly once, never before the starter
returns and never after `cancel()`, which returns the task still unwinding, if any. A
network starter's `repeatable` tells the prober what the native lane may repeat. The
network handlers (tcpSocket, plain httpGet) run from event-loop callbacks with no
task at all (common.NetworkRun); the guest-agent handlers are coroutines run as a
task each. `run_probe` runs a probe once and awaits its result (`vmhealth probe`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Callable

from vmhealth import spec
from vmhealth.monitor.interfaces import (
    Cancel,
    GuestAccess,
    OnDone,
    Outcome,
    ProbeResult,
    ProbeStarter,
    Recipe,
)
from vmhealth.monitor.probes.agent_exec import run_agent_exec_probe
from vmhealth.monitor.probes.agent_ping import run_agent_ping_probe
from vmhealth.monitor.probes.http import HttpProbeStarter
from vmhealth.monitor.probes.tcp import TcpProbeStarter

log = logging.getLogger(__name__)

StarterFactory = Callable[[spec.Probe], ProbeStarter]


class TaskStarter:
    """Runs a coroutine handler (`handler(probe, access)`) as a task per run."""

    __slots__ = ("probe", "handler")
    repeatable: Recipe | None = None  # the native lane runs no coroutine handler

    def __init__(self, probe: spec.Probe,
                 handler: Callable[[spec.Probe, GuestAccess], Awaitable[ProbeResult]]) -> None:
        self.probe = probe
        self.handler = handler

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Cancel:
        task = asyncio.get_running_loop().create_task(self.handler(self.probe, access))

        def deliver(finished: asyncio.Task) -> None:
            if finished.cancelled():
                return
            error = finished.exception()
            if error is None:
                on_done(finished.result())
                return
            log.error("probe of %s failed inside vmhealth", access.name, exc_info=error)
            on_done(ProbeResult(Outcome.ERROR, f"vmhealth could not run the probe "
                                f"({type(error).__name__}; see the daemon's log)", 0.0,
                                time.time()))

        task.add_done_callback(deliver)

        def cancel() -> asyncio.Task:
            task.remove_done_callback(deliver)
            task.cancel()
            return task

        return cancel


class PausedStarter:
    """A guestAgentPing probe paused on purpose (the spec's guestAgentPingPaused, from
    KubeVirt's kubevirt.io/pause-guest-agent-probes): every run is SKIPPED, neither
    counted nor retried, so maintenance inside the guest can stop its agent."""

    __slots__ = ()
    repeatable: Recipe | None = None  # a skipped run is nothing to repeat
    MESSAGE = ("not run: guest-agent ping probes are paused (guestAgentPingPaused; "
               "`vmhealth probes resume DOMAIN` resumes them)")

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Cancel:
        handle = asyncio.get_running_loop().call_soon(  # never before we return
            on_done, ProbeResult(Outcome.SKIPPED, self.MESSAGE, 0.0, time.time()))

        def cancel() -> None:
            handle.cancel()
        return cancel


def starter_for(probe: spec.Probe) -> ProbeStarter:
    """The starter of `probe`'s handler (see the module docstring)."""
    handler = probe.handler
    if isinstance(handler, spec.TcpSocket):
        return TcpProbeStarter(probe)
    if isinstance(handler, spec.HttpGet):
        return HttpProbeStarter(probe)
    if isinstance(handler, spec.GuestAgentPing):
        return TaskStarter(probe, run_agent_ping_probe)
    if isinstance(handler, spec.Exec):
        return TaskStarter(probe, run_agent_exec_probe)
    raise TypeError(f"no probe handler for {type(handler).__name__}")


async def run_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    """Run `probe` once against the guest behind `access`; never raises for guest trouble."""
    return await run_once(starter_for(probe), access)


async def run_once(starter: ProbeStarter, access: GuestAccess) -> ProbeResult:
    """One run of `starter`, awaited; cancelling the caller cancels the run."""
    done: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
    cancel = starter(access, done.set_result)
    try:
        return await done
    except asyncio.CancelledError:
        cancel()
        raise


__all__ = ["Cancel", "PausedStarter", "ProbeStarter", "StarterFactory", "TaskStarter",
           "run_once", "run_probe", "starter_for"]
