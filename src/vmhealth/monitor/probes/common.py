"""What every probe handler shares: result construction, deadlines, guest targets.

Semantics follow kubelet/KubeVirt (docs/probes.md) ("Handlers", "Outcomes"):
a probe that could not be run at all is an ERROR (retried by the prober, never
counted); a clean negative answer is a FAILURE.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Awaitable
from typing import Callable, TypeVar

from vmhealth.monitor.interfaces import (
    AgentError,
    AgentUnavailable,
    GuestAccess,
    Outcome,
    ProbeResult,
)
from vmhealth.monitor.probes.dial import Dial, HostSocketError, Sink, sockaddr
from vmhealth.spec import Probe

T = TypeVar("T")

# Kubelet reads at most 10 KiB of an HTTP body or exec output (probe-semantics.md).
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


async def run_on_targets(probe: Probe, spec_host: str | None, access: GuestAccess,
                         attempt: Callable[[list[str], ProbeClock, float], Awaitable[ProbeResult]],
                         timeout_message: str) -> ProbeResult:
    """The frame of every network probe: find the targets, then run `attempt(hosts,
    clock, deadline)` with the probe's timeoutSeconds as one absolute deadline (loop
    time); no address yet is an ERROR, and so is a host out of sockets; the deadline
    passing is a FAILURE.

    Targets: the spec's host, else the guest's addresses (IPv4 and IPv6), best first.
    """
    clock = ProbeClock()
    if spec_host:
        hosts = [spec_host]
    else:
        try:
            hosts = await access.addresses()
        except (AgentUnavailable, AgentError, OSError):
            hosts = []  # address discovery failed: nothing to try this time
        if not hosts:
            return no_address(clock, access)
    deadline = asyncio.get_running_loop().time() + probe.timeout_seconds
    try:
        return await attempt(hosts, clock, deadline)
    except TimeoutError:
        return clock.result(Outcome.FAILURE, timeout_message)
    except HostSocketError as exc:  # the host's trouble, not the guest's: not counted
        return clock.result(Outcome.ERROR, str(exc))


def no_address(clock: ProbeClock, access: GuestAccess) -> ProbeResult:
    return clock.result(Outcome.ERROR,
                        f"no IP address known for guest {access.name} yet "
                        "(no DHCP lease, agent or ARP entry); set the probe's host to skip "
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


def printable_excerpt(data: bytes, limit: int = 200) -> str:
    """A short, single-line rendering of guest-controlled bytes for a message."""
    text = data[:limit].decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text + ("..." if len(data) > limit else "")


class ConnectFailed(Exception):
    """No address of the guest accepted the connection; the message names each attempt."""


async def dial_first(hosts: list[str], port: int, deadline: float, *,
                     request_for: Callable[[str], bytes] | None = None,
                     sink_factory: Callable[[], Sink] | None = None) -> tuple[str, Sink | None]:
    """Connect to the first of `hosts` that accepts, in order; returns (host, sink).

    With `request_for`, send request_for(host) and read the answer into a new sink
    from `sink_factory` (see dial.Dial). A refused or unreachable address moves on to
    the next one (kubelet dials one address; a VM has several); an answer the sink
    rejects ends the probe. Every attempt shares the absolute `deadline` (loop time):
    TimeoutError when it passes. IP literals skip the resolver; a host name from the
    spec is resolved by the loop, within the same deadline.
    """
    loop = asyncio.get_running_loop()
    problems = []
    for host in hosts:
        literal = sockaddr(host, port)
        if literal is not None:  # the common case: no resolver, no extra coroutine
            addresses = [literal]
        else:
            try:
                addresses = await _resolve_name(loop, host, port, deadline)
            except OSError as exc:
                problems.append(f"{host_for_url(host)}:{port}: {describe_os_error(exc)}")
                continue
        for family, address in addresses:
            sink = sink_factory() if sink_factory is not None else None
            request = request_for(host) if request_for is not None else None
            attempt = None
            try:
                attempt = Dial(loop, family, address, deadline, request, sink)
                await attempt.done
            except (TimeoutError, ConnectionResetError, BrokenPipeError):
                # OSErrors too, but verdicts on the whole probe: out of time, or a
                # server that accepted and then broke off mid-answer.
                raise
            except OSError as exc:  # refused, unreachable, no IPv6 here: try the next one
                problems.append(f"{host_for_url(host)}:{port}: {describe_os_error(exc)}")
                continue
            except asyncio.CancelledError:
                if attempt is not None:
                    attempt.abort()  # the probe was cancelled: reset the connection now
                raise
            return host, sink
    raise ConnectFailed("; ".join(problems))


async def _resolve_name(loop: asyncio.AbstractEventLoop, host: str, port: int,
                        deadline: float) -> list[tuple[int, tuple]]:
    infos = await with_timeout(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
        max(0.0, deadline - loop.time()))
    return [(family, address) for family, _type, _proto, _name, address in infos]
