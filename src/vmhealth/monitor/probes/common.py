"""What every probe handler shares: result construction, deadlines, guest targets.

Semantics follow kubelet/KubeVirt (docs/probes.md) ("Handlers", "Outcomes"):
a probe that could not be run at all is an ERROR (retried by the prober, never
counted); a clean negative answer is a FAILURE.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Callable, TypeVar

from vmhealth.excerpt import excerpt
from vmhealth.monitor.interfaces import (
    AGENT_SYNC_SECONDS,
    AgentBusy,
    AgentUnavailable,
    GuestAccess,
    NoVerdict,
    OnDone,
    Outcome,
    ProbeResult,
    Recipe,
)
from vmhealth.monitor.probes.dial import Dial, HostSocketError, Sink, sockaddr

T = TypeVar("T")
log = logging.getLogger(__name__)

# Kubelet reads at most 10 KiB of an HTTP body or exec output (docs/probe-semantics.md).
OUTPUT_CAP_BYTES = 10 * 1024


class ProbeClock:
    """Start time of one probe run, for ProbeResult.started_at/duration."""

    __slots__ = ("started_at", "_t0")

    def __init__(self) -> None:
        self.started_at = time.time()
        self._t0 = time.monotonic()

    def result(self, outcome: Outcome, message: str) -> ProbeResult:
        return ProbeResult(outcome=outcome, message=message,
                           duration=time.monotonic() - self._t0, started_at=self.started_at)


if sys.version_info >= (3, 11):
    async def with_timeout(awaitable: Awaitable[T], seconds: float) -> T:
        """Await with a time limit; raises TimeoutError (asyncio.timeout: no extra task)."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:  # pragma: no cover - exercised on EL9's Python 3.9
    async def with_timeout(awaitable: Awaitable[T], seconds: float) -> T:
        """Await with a time limit; raises TimeoutError."""
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError as exc:  # a distinct class before 3.11
            raise TimeoutError from exc


class AgentProblem(Exception):
    """An agent call that ended without the agent's own answer, as a probe outcome."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome, self.message = outcome, message


async def agent_call(access: GuestAccess, command: dict, timeout: float) -> object:
    """One agent command for a probe; raises AgentError (the agent answered with an
    error) or AgentProblem with the outcome the probe gets (docs/probes.md, "Guest agent
    outcomes"): the agent absent or silent within the timeout is a FAILURE (KubeVirt:
    "if the guest agent is not available, this probe will fail"); this guest's previous
    call still in flight is SKIPPED; no verdict from libvirt is an ERROR."""
    # GuestAccess bounds the call (timeout + libvirt's guest-sync); ours is the backstop
    # for a seam that does not.
    try:
        return await with_timeout(access.agent_command(command, timeout),
                                  timeout + AGENT_SYNC_SECONDS + 2)
    except AgentUnavailable as exc:
        raise AgentProblem(Outcome.FAILURE, f"guest agent unavailable: {excerpt(exc)}") from None
    except AgentBusy as exc:
        raise AgentProblem(Outcome.SKIPPED, excerpt(exc)) from None
    except NoVerdict as exc:
        raise AgentProblem(Outcome.ERROR, excerpt(exc)) from None
    except TimeoutError:
        raise AgentProblem(Outcome.ERROR, "no answer from the guest-agent call in time "
                                          "(not counted)") from None


def no_address_message(access: GuestAccess) -> str:
    return (f"no IP address known for guest {access.name} (no DHCP lease of its MACs, "
            "no agent or ARP address on its networks); set the probe's host to skip "
            "address discovery")


def host_for_url(host: str) -> str:
    """A host as it appears in a URL or Host header: IPv6 literals in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def describe_os_error(exc: OSError) -> str:
    """`connection refused` rather than `[Errno 111] Connect call failed ('10.0.0.5', 80)`."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


class ConnectFailed(Exception):
    """No address of the guest accepted the connection; the message names each attempt."""


class NetworkRun:
    """One run of a network probe (tcpSocket, httpGet), driven by callbacks, not a task.

    At 2,000 probes a second a task, its coroutines and futures per probe cost more CPU
    than the connection itself (docs/probes.md), so the common path runs from the
    event loop's callbacks: the prober starts a run, the sockets' epoll (dial.py)
    drives it, and `on_done(result)` ends it. Only the rare paths run in a task:
    looking the guest's addresses up, resolving a host name, and TLS.

    `start()` finds the targets - the spec's host, else the guest's addresses (IPv4
    and IPv6, best first), from `access.cached_addresses()` at once or awaited from
    `access.addresses()` - and calls `begin(hosts)`. A subclass then connects with
    `dial()` (each address in order until one accepts: kubelet dials one address, a VM
    has several) or `run_in_task()`, hears back in `exchanged(host, sink, error)`, and
    ends with `finish()`. timeoutSeconds runs from when the targets are known, as one
    absolute deadline (loop time) for every attempt and redirect.

    Outcomes: no address yet, or a host out of sockets, is an ERROR (retried, never
    counted); the deadline passing is a FAILURE. `on_done` is called exactly once,
    never before `start()` returns and never after `cancel()`.
    """

    __slots__ = ("loop", "access", "deadline", "_timeout", "_on_done", "_started_at",
                 "_t0", "_starting", "_dial", "_task", "_candidates", "_next", "_problems",
                 "_port", "_exchanging", "_host", "_sink", "_from_cache", "_resolved")

    def __init__(self, timeout: float, access: GuestAccess, on_done: OnDone) -> None:
        self.loop = asyncio.get_running_loop()
        self.access = access
        self._timeout = timeout
        self._on_done: OnDone | None = on_done
        self._started_at = time.time()
        self._t0 = time.monotonic()
        self._starting = True
        self._dial: Dial | None = None
        self._task: asyncio.Task | None = None
        self.deadline = 0.0
        self._from_cache = False
        self._resolved = False

    # -- what a subclass provides ------------------------------------------------------
    def begin(self, hosts: list[str]) -> None:
        raise NotImplementedError

    def exchanged(self, host: str | None, sink: Sink | None,
                  error: BaseException | None) -> None:
        """The attempt ended: error None, ConnectFailed, or the verdict of a server that
        answered (an OSError such as a reset, or the sink's own exception)."""
        raise NotImplementedError

    def timeout_message(self) -> str:
        raise NotImplementedError

    def request_for(self, host: str) -> bytes:
        """The request to send to `host` (only for dial(..., exchange=True))."""
        raise NotImplementedError

    def new_sink(self) -> Sink:
        """A sink for one answer (only for dial(..., exchange=True))."""
        raise NotImplementedError

    # -- the run ---------------------------------------------------------------------
    def start(self, spec_host: str | None) -> Callable[[], asyncio.Task | None]:
        """Begin; returns `cancel`, which returns the task to wait for, if any."""
        try:
            if spec_host:
                self._targets_found([spec_host])
            else:
                self._from_cache = True
                hosts = self.access.cached_addresses()
                if hosts is None:
                    self._task = self.loop.create_task(self._look_up_addresses())
                else:
                    self._targets_found(hosts)
        finally:
            self._starting = False
        return self.cancel

    def cancel(self) -> asyncio.Task | None:
        self._on_done = None
        if self._dial is not None:
            self._dial.abort()
            self._dial = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    def finish(self, outcome: Outcome, message: str) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is None:
            return  # cancelled, or already finished
        result = ProbeResult(outcome, message, time.monotonic() - self._t0, self._started_at)
        if self._starting:  # keep the promise: never before start() returns
            self.loop.call_soon(on_done, result)
        else:
            on_done(result)

    def _targets_found(self, hosts: list[str]) -> None:
        if not hosts:
            # Counted, as kubelet counts a pod it cannot reach: a guest that never got
            # an address is not up; startupProbe and initialDelaySeconds give it time.
            # (Once it had addresses, GuestAccess keeps the last ones: docs/probes.md.)
            self.finish(Outcome.FAILURE, no_address_message(self.access))
            return
        self.deadline = self.loop.time() + self._timeout
        try:  # inline rather than through _guarded: one call less on the hot path
            self.begin(hosts)
        except Exception as exc:  # noqa: BLE001 - reported, logged, and the run ends
            self._failed_inside(exc)

    async def _look_up_addresses(self) -> None:
        try:
            hosts = await self.access.addresses()
        except Exception as exc:  # noqa: BLE001 - the host's trouble (NoVerdict) or a bug
            self._task = None
            self.finish(Outcome.ERROR, f"cannot look up the guest's addresses: "
                                       f"{excerpt(exc) or type(exc).__name__}")
            return
        self._task = None
        self._targets_found(hosts)

    def _guarded(self, step: Callable[..., None], *args: object) -> None:
        """Run one step; a bug in it ends this run with an ERROR instead of stalling it."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - reported, logged, and the run ends
            self._failed_inside(exc)

    def _failed_inside(self, exc: Exception) -> None:
        log.error("probe of %s failed inside vmhealth", self.access.name, exc_info=exc)
        self.finish(Outcome.ERROR, f"vmhealth could not run the probe ({type(exc).__name__}; "
                                   "see the daemon's log)")

    # -- connecting ------------------------------------------------------------------
    def dial(self, hosts: list[str], port: int, *, exchange: bool = False) -> None:
        """Connect to the first of `hosts` that accepts, in order; with `exchange`,
        send request_for(host) and feed the answer to new_sink() (see dial.Dial).
        Ends in `exchanged`. IP literals are dialled at once; host names are resolved
        first, in a task, within the deadline.

        (No callables are kept on the run: a bound method or closure stored on it
        would make a reference cycle per probe for the cyclic garbage collector.)"""
        self._port, self._exchanging = port, exchange
        self._problems: list[str] = []
        self._next = 0
        candidates = []
        for host in hosts:
            literal = sockaddr(host, port)
            if literal is None:
                self._task = self.loop.create_task(self._resolve_then_dial(hosts, port))
                return
            candidates.append((host, *literal))
        self._candidates = candidates
        self._dial_next()

    def run_in_task(self, exchange: Awaitable[tuple[str, Sink]]) -> None:
        """Run an exchange as a task within the deadline (TLS); ends in `exchanged`."""
        self._task = self.loop.create_task(self._await_exchange(exchange))

    async def _await_exchange(self, exchange: Awaitable[tuple[str, Sink]]) -> None:
        host = sink = error = None
        try:
            host, sink = await with_timeout(exchange, max(0.0, self.deadline - self.loop.time()))
        except Exception as exc:  # noqa: BLE001 - handed to _ended as the verdict
            error = exc
        self._task = None
        self._ended(host, sink, error)

    async def _resolve_then_dial(self, hosts: list[str], port: int) -> None:
        candidates = []
        for host in hosts:
            literal = sockaddr(host, port)
            if literal is not None:
                candidates.append((host, *literal))
                continue
            try:
                infos = await with_timeout(
                    self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                          proto=socket.IPPROTO_TCP),
                    max(0.0, self.deadline - self.loop.time()))
            except TimeoutError as exc:
                self._task = None
                self._ended(None, None, exc)
                return
            except OSError as exc:
                self._note_problem(host, exc)
                continue
            candidates.extend((host, family, address)
                              for family, _type, _proto, _name, address in infos)
        self._task = None
        self._candidates = candidates
        self._resolved = True
        self._guarded(self._dial_next)

    def _dial_next(self) -> None:
        candidates, loop = self._candidates, self.loop
        while self._next < len(candidates):
            host, family, address = candidates[self._next]
            self._next += 1
            sink = request = None
            if self._exchanging:
                sink, request = self.new_sink(), self.request_for(host)
            try:
                self._dial = Dial(loop, family, address, self.deadline, self._dial_ended,
                                  request, sink)
            except HostSocketError as exc:  # the host's trouble, not the guest's
                self.finish(Outcome.ERROR, str(exc))
                return
            except OSError as exc:  # no route, no IPv6 here: try the next address
                self._note_problem(host, exc)
                continue
            self._host, self._sink = host, sink
            return
        self._dial = None
        self._ended(None, None, ConnectFailed("; ".join(self._problems)))

    def _dial_ended(self, error: BaseException | None) -> None:
        self._dial = None
        if (error is None or not isinstance(error, OSError)
                or isinstance(error, (TimeoutError, ConnectionResetError, BrokenPipeError))):
            # An answer, or a verdict on the whole probe: out of time, a server that
            # accepted and then broke off mid-answer, an answer the sink rejected.
            self._ended(self._host, self._sink, error)
            return
        # Refused or unreachable: try the next address.
        self._note_problem(self._host, error)
        self._guarded(self._dial_next)

    def recipe(self, host: str, request: bytes | None, status: int,
               message: str) -> Recipe | None:
        """What the native lane may repeat after this success (native_lane.py): only
        when the first address tried answered, as an IP literal; otherwise a repetition
        could not end the same way."""
        if self._resolved or self._next != 1 or self._problems or "%" in host:
            return None
        return Recipe(host, self._port, request, status, message, self._from_cache,
                      self.timeout_message())

    def _note_problem(self, host: str, error: OSError) -> None:
        self._problems.append(f"{host_for_url(host)}:{self._port}: {describe_os_error(error)}")

    def _ended(self, host: str | None, sink: Sink | None, error: BaseException | None) -> None:
        if isinstance(error, TimeoutError):
            self.finish(Outcome.FAILURE, self.timeout_message())
        elif isinstance(error, HostSocketError):
            self.finish(Outcome.ERROR, str(error))
        else:
            try:
                self.exchanged(host, sink, error)
            except Exception as exc:  # noqa: BLE001 - reported, logged, and the run ends
                self._failed_inside(exc)
