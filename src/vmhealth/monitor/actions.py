"""What the daemon does when liveness fails: restart, reset, poweroff or nothing.

Restart is the Kubernetes sequence adapted to a VM: ask the guest to shut down (the
ACPI power button, never through the agent: see _press_power_button),
give it terminationGracePeriodSeconds, destroy it if it is still running, then start
it again. Restarts of one domain back off exponentially (10 s, 20 s, ... capped at
5 minutes) so a guest that fails every time does not loop; the count starts over once
the domain has run 10 minutes since its last restart. The wait happens while the
domain is off, like Kubernetes' CrashLoopBackOff.

The same back-off paces the run strategies' starts (`start_again`, after a stop the
spec's runStrategy does not leave alone; monitor/run_strategy.py decides): a domain
that crashes at every boot, or whose liveness fails each time, waits the same
growing times, counted once.

Every libvirt call blocks, so each runs in the control thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable

import libvirt

from vmhealth.excerpt import excerpt
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.logfmt import log_fields
from vmhealth.monitor.run_strategy import (
    OWN_POWEROFF,
    OWN_RESTART,
    StopCause,
    StopClues,
    Verdict,
    verdict,
)
from vmhealth.spec import LivenessAction

log = logging.getLogger("vmhealth.actions")

SHUTDOWN_POLL_SECONDS = 0.5


@dataclass
class Backoff:
    """Restart back-off of one domain."""

    initial: float = 10.0
    maximum: float = 300.0
    reset_after: float = 600.0
    count: int = 0
    last: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before the restart about to happen."""
        if self.last is not None and now - self.last >= self.reset_after:
            self.count = 0  # it ran long enough since the last restart: start over
        if self.count == 0:
            return 0.0
        return min(self.initial * 2 ** (self.count - 1), self.maximum)

    def record(self, now: float) -> None:
        self.count += 1
        self.last = now


@dataclass
class PendingAction:
    action: str
    phase: str  # shutting down, destroying, backing off, starting, resetting, done, failed
    since: float
    resume_at: float | None = None  # wall-clock time the back-off ends

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "phase": self.phase, "since": self.since,
                "resumeAt": self.resume_at}


def _press_power_button(dom: Any) -> None:
    """Blocking: ask the guest to shut down with the ACPI power button only.

    Kubernetes sends SIGTERM; the VM's equivalent is the power button. libvirt's plain
    shutdown() tries the guest agent first, and a hung guest's agent holds that call
    (and the domain's job) for up to a minute before libvirt falls back to ACPI: the
    grace period would start a minute late, exactly for the guests liveness exists for.
    Drivers without the flag (the test driver) get the plain call."""
    try:
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG,
                                        libvirt.VIR_ERR_NO_SUPPORT,
                                        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED):
            raise
        dom.shutdown()


class ActionRunner:
    def __init__(self, events: EventLog, pool: Executor, *, initial: float = 10.0,
                 maximum: float = 300.0, reset_after: float = 600.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_action: Callable[[str, str], None] | None = None) -> None:
        self._events = events
        self._pool = pool
        self._backoff_settings = (initial, maximum, reset_after)
        self._clock = clock
        self._on_action = on_action or (lambda domain, action: None)
        self._backoffs: dict[str, Backoff] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.pending: dict[str, PendingAction] = {}  # domain uuid -> action in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        # What ends each domain's run, for the run strategies; our own stops go in too.
        self.stop_clues = StopClues(clock)

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the daemon stops: a back-off wait ends at once and the domain is
        started, because nobody would start it later. Made on first use, on the event
        loop (Python 3.9 binds an Event to the loop current when it is made)."""
        if self._stopping is None:
            self._stopping = asyncio.Event()
        return self._stopping

    def backoff(self, uuid: str) -> Backoff:
        if uuid not in self._backoffs:
            initial, maximum, reset_after = self._backoff_settings
            self._backoffs[uuid] = Backoff(initial, maximum, reset_after)
        return self._backoffs[uuid]

    def retain(self, uuids: set[str]) -> None:
        """Forget the back-off and lock of every domain not in `uuids` and not acting
        (domains deleted from the host)."""
        for uuid in [u for u in self._backoffs if u not in uuids and u not in self.pending]:
            del self._backoffs[uuid]
        for uuid, lock in list(self._locks.items()):
            if uuid not in uuids and uuid not in self.pending and not lock.locked():
                del self._locks[uuid]
        self.stop_clues.retain(uuids)

    def start(self, dom: Any, action: LivenessAction, grace_seconds: int, reason: str
              ) -> asyncio.Task[None] | None:
        """Run `action` on `dom` in the background; None when one is already in flight,
        or when there is nothing to run: `report` (a cluster manager acts, docs/
        cluster.md) counts the failure in vmhealth_liveness_actions and touches nothing."""
        if action is LivenessAction.REPORT:
            self._on_action(dom.name(), action.value)
            return None
        uuid = dom.UUIDString()
        if uuid in self.pending:
            return None
        self.pending[uuid] = PendingAction(action.value, "starting", time.time())
        task = asyncio.ensure_future(self._run(dom, uuid, action, grace_seconds, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_idle(self, timeout: float) -> bool:
        """Wait for actions in flight (daemon stopping); False when some did not finish."""
        if not self._tasks:
            return True
        _done, not_done = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not not_done

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run(self, dom: Any, uuid: str, action: LivenessAction, grace: int,
                   reason: str) -> None:
        name = dom.name()
        lock = self._locks.setdefault(uuid, asyncio.Lock())
        async with lock:
            try:
                if action is LivenessAction.RESTART:
                    await self._restart(dom, uuid, grace)
                elif action is LivenessAction.RESET:
                    self._phase(uuid, "resetting")
                    await self._call(dom.reset, 0)
                elif action is LivenessAction.POWEROFF:
                    self._phase(uuid, "powering off")
                    self.stop_clues.own_stop(uuid, OWN_POWEROFF)
                    await self._destroy_if_active(dom)
                self._on_action(name, action.value)
                self._events.record(name, "LivenessAction", f"liveness failed ({reason}): "
                                    f"{action.value} done", action=action.value)
            except libvirt.libvirtError as exc:
                log.error("liveness action failed", extra=log_fields(
                    domain=name, action=action.value, error=str(exc)))
                self._events.record(name, "LivenessActionFailed",
                                    f"{action.value} failed: {exc}", action=action.value)
            finally:
                self.pending.pop(uuid, None)

    def _phase(self, uuid: str, phase: str, resume_at: float | None = None) -> None:
        pending = self.pending.get(uuid)
        if pending is not None:
            pending.phase = phase
            pending.resume_at = resume_at

    async def _restart(self, dom: Any, uuid: str, grace: int) -> None:
        persistent = await self._call(dom.isPersistent)
        # A transient domain disappears when it stops: keep its definition to start it.
        xml = None if persistent else await self._call(dom.XMLDesc, libvirt.VIR_DOMAIN_XML_SECURE)
        self._phase(uuid, "shutting down")
        self.stop_clues.own_stop(uuid, OWN_RESTART)  # its stop is this action's business
        if await self._is_active(dom):
            try:
                await self._call(_press_power_button, dom)
            except libvirt.libvirtError as exc:
                log.warning("graceful shutdown refused; destroying", extra=log_fields(
                    domain=dom.name(), error=str(exc)))
            await self._wait_inactive(dom, grace)
        self._phase(uuid, "destroying")
        await self._destroy_if_active(dom)
        backoff = self.backoff(uuid)
        while True:
            await self._back_off(dom, uuid, backoff)
            self._phase(uuid, "starting")
            try:
                if persistent:
                    await self._call(dom.create)
                else:
                    await self._call(dom.connect().createXML, xml, 0)
            except libvirt.libvirtError as exc:
                # The domain cannot start now (a missing disk, no memory...): keep trying
                # after the back-off, or nobody would start it again. Unless it is gone,
                # someone else started it, or the daemon stops.
                backoff.record(self._clock())
                if (self.stopping.is_set() or exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
                        or await self._is_active(dom)):
                    raise
                self._events.record(dom.name(), "LivenessActionFailed",
                                    f"start failed: {excerpt(exc.get_error_message())}; "
                                    "trying again after the back-off", action="restart")
                continue
            backoff.record(self._clock())
            return

    async def _back_off(self, dom: Any, uuid: str, backoff: Backoff) -> None:
        delay = backoff.delay(self._clock())
        if delay <= 0:
            return
        self._phase(uuid, "backing off", time.time() + delay)
        self._events.record(dom.name(), "RestartBackOff",
                            f"restart back-off: starting again in {delay:g} s",
                            delaySeconds=delay, restarts=backoff.count)
        try:
            await asyncio.wait_for(self.stopping.wait(), delay)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------------------ run strategies
    def start_again(self, dom: Any, cause: StopCause, spec_reader: Callable[[Any], Any]
                    ) -> asyncio.Task[None] | None:
        """After a stop for `cause`, start `dom` again if its run strategy says so: the
        spec `spec_reader(dom)` reads (blocking) and the domain as it is now
        (run_strategy.verdict), asked before and again after each back-off wait. None
        when a liveness restart in flight owns the stop."""
        uuid = dom.UUIDString()
        pending = self.pending.get(uuid)
        if cause is StopCause.LIVENESS_RESTART or (
                pending is not None and pending.action == LivenessAction.RESTART.value):
            return None

        def check() -> Awaitable[Verdict]:
            return self._call(verdict, dom, cause, spec_reader)
        task = asyncio.ensure_future(self._start_again(dom, uuid, cause, check))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start_again(self, dom: Any, uuid: str, cause: StopCause,
                           check: Callable[[], Awaitable[Verdict]]) -> None:
        name = dom.name()
        try:
            first = await check()
            if not first.start:
                if first.noteworthy:
                    self._not_started(name, cause, first)
                return
            # A liveness poweroff that stopped it may still hold the lock: after it.
            async with self._locks.setdefault(uuid, asyncio.Lock()):
                if uuid in self.pending:
                    return  # acted on meanwhile (so it runs again): not ours any more
                self.pending[uuid] = PendingAction("start", "starting", time.time())
                try:
                    await self._start_after_back_off(dom, uuid, cause, check)
                finally:
                    self.pending.pop(uuid, None)
        except libvirt.libvirtError as exc:
            log.error("run strategy start failed", extra=log_fields(
                domain=name, cause=cause.value, error=str(exc)))
            self._events.record(name, "RunStrategyStartFailed",
                                f"not started again ({cause.text}): {exc}",
                                cause=cause.value)

    async def _start_after_back_off(self, dom: Any, uuid: str, cause: StopCause,
                                    check: Callable[[], Awaitable[Verdict]]) -> None:
        backoff = self.backoff(uuid)
        while True:
            await self._back_off(dom, uuid, backoff)
            now = await check()  # undefined, started, or set to Manual meanwhile?
            if not now.start:
                self._not_started(dom.name(), cause, now)
                return
            self._phase(uuid, "starting")
            try:
                await self._call(dom.create)
            except libvirt.libvirtError as exc:
                # As a liveness restart's start: try again after the back-off (the next
                # check sees an undefined domain or a changed strategy), unless stopping.
                backoff.record(self._clock())
                if self.stopping.is_set():
                    raise
                self._events.record(dom.name(), "RunStrategyStartFailed",
                                    f"start failed: {excerpt(exc.get_error_message())}; "
                                    "trying again after the back-off", cause=cause.value)
                continue
            backoff.record(self._clock())
            self._events.record(dom.name(), "RunStrategyStart",
                                f"started again: {now.reason}", runStrategy=now.strategy,
                                cause=cause.value, restarts=backoff.count)
            return

    def _not_started(self, name: str, cause: StopCause, why: Verdict) -> None:
        self._events.record(name, "RunStrategySkipped", f"left off: {why.reason}",
                            runStrategy=why.strategy, cause=cause.value)

    async def _is_active(self, dom: Any) -> bool:
        try:
            return bool(await self._call(dom.isActive))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False  # a transient domain is gone once it stops
            raise

    async def _wait_inactive(self, dom: Any, grace: float) -> None:
        deadline = self._clock() + grace
        while self._clock() < deadline:
            if not await self._is_active(dom):
                return
            await asyncio.sleep(min(SHUTDOWN_POLL_SECONDS, max(0.0, deadline - self._clock())))

    async def _destroy_if_active(self, dom: Any) -> None:
        try:
            if await self._is_active(dom):
                await self._call(dom.destroy)
        except libvirt.libvirtError as exc:
            # It may have stopped between the check and the call: only that is fine.
            if await self._is_active(dom):
                raise exc from None
