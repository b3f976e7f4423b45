"""exec probe: run a command in the guest through qemu-guest-agent.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (exec, as KubeVirt
runs it): `guest-exec {path, arg, capture-output: true}`, then poll
`guest-exec-status {pid}` until `exited` or timeoutSeconds; exit code 0 = success;
output (base64 in the agent's answer) decoded and capped at 10 KiB. Commands are
dicts: the daemon's GuestAccess serialises them with json.dumps (KubeVirt formats
JSON by hand without escaping, a bug not to repeat).

On timeout the guest process keeps running: qemu-guest-agent has no command to kill
what guest-exec started, so a probe command must end on its own. A command that
never ends costs one guest process per period.

An agent that refuses guest-exec (qemu-ga's RPC block/allow list, as on RHEL by
default) gives a FAILURE whose message names the fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from vmhealth import spec
from vmhealth.monitor.interfaces import (
    AgentError,
    AgentUnavailable,
    GuestAccess,
    Outcome,
    ProbeResult,
)
from vmhealth.monitor.probes.common import (
    OUTPUT_CAP_BYTES,
    ProbeClock,
    printable_excerpt,
    with_timeout,
)

FIRST_POLL_SECONDS = 0.05  # most probe commands end within a few tens of milliseconds
POLL_GROWTH = 1.5
MAX_POLL_SECONDS = 0.5
BLOCKED_FIX = ("guest-exec is blocked by the guest agent's RPC filter; allow it by running "
               "`vmhealth guest setup` in the guest, or remove guest-exec and "
               "guest-exec-status from the block list (allow-rpcs/block-rpcs) in the "
               "file the guest's qemu-guest-agent unit reads (/etc/sysconfig/qemu-ga on "
               "RHEL and Fedora; `systemctl cat qemu-guest-agent` shows it), then restart "
               "qemu-guest-agent")


class _AgentRefused(Exception):
    def __init__(self, result: ProbeResult) -> None:
        super().__init__(result.message)
        self.result = result


def is_blocked(exc: AgentError) -> bool:
    """Did the agent refuse because the RPC is disabled (rather than the command failing)?"""
    if exc.blocked or exc.error_class == "CommandDisabled":
        return True
    text = str(exc).lower()
    return "has been disabled" in text or "command not allowed" in text


def exec_command(argv: tuple[str, ...]) -> dict[str, Any]:
    return {"execute": "guest-exec",
            "arguments": {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}}


def status_command(pid: int) -> dict[str, Any]:
    return {"execute": "guest-exec-status", "arguments": {"pid": pid}}


def decode_output(status: dict[str, Any]) -> bytes:
    """stdout then stderr, base64-decoded, capped at 10 KiB."""
    out = bytearray()
    for key in ("out-data", "err-data"):
        data = status.get(key)
        if not isinstance(data, str):
            continue
        try:
            out += base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            out += b"<undecodable agent output>"
        if len(out) >= OUTPUT_CAP_BYTES:
            break
    return bytes(out[:OUTPUT_CAP_BYTES])


async def _agent(access: GuestAccess, command: dict[str, Any], timeout: float,
                 clock: ProbeClock) -> Any:
    name = command["execute"]
    try:
        return await with_timeout(access.agent_command(command, timeout), timeout + 1)
    except AgentUnavailable as exc:
        raise _AgentRefused(clock.result(Outcome.ERROR,
                                         f"guest agent unavailable: {exc}")) from exc
    except AgentError as exc:
        if is_blocked(exc):
            raise _AgentRefused(clock.result(Outcome.FAILURE, BLOCKED_FIX)) from exc
        raise _AgentRefused(clock.result(Outcome.FAILURE, f"{name} failed: {exc}")) from exc


def _finished(status: dict[str, Any], argv: tuple[str, ...], clock: ProbeClock) -> ProbeResult:
    output = printable_excerpt(decode_output(status), OUTPUT_CAP_BYTES)
    suffix = f"; output: {output}" if output else ""
    if status.get("signal") is not None:
        return clock.result(Outcome.FAILURE,
                            f"{argv[0]} killed by signal {status['signal']}{suffix}")
    code = status.get("exitcode")
    if code == 0:
        return clock.result(Outcome.SUCCESS, f"{argv[0]} exited 0{suffix}")
    return clock.result(Outcome.FAILURE, f"{argv[0]} exited {code}{suffix}")


async def run_agent_exec_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    handler = probe.handler
    assert isinstance(handler, spec.Exec)
    clock = ProbeClock()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + probe.timeout_seconds
    try:
        started = await _agent(access, exec_command(handler.command),
                               probe.timeout_seconds, clock)
        pid = started["pid"] if isinstance(started, dict) else None
        if not isinstance(pid, int):
            return clock.result(Outcome.ERROR, f"guest-exec returned no pid ({started!r})")
        interval = FIRST_POLL_SECONDS
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, MAX_POLL_SECONDS)
            # A status poll gets at least a short moment even at the deadline's edge.
            status = await _agent(access, status_command(pid),
                                  max(deadline - loop.time(), 0.2), clock)
            if isinstance(status, dict) and status.get("exited"):
                return _finished(status, handler.command, clock)
    except _AgentRefused as refused:
        return refused.result
    except TimeoutError:
        return clock.result(Outcome.ERROR, "guest agent did not answer in time")
    return clock.result(Outcome.FAILURE,
                        f"{handler.command[0]} did not exit within {probe.timeout_seconds}s "
                        f"(guest pid {pid} keeps running)")
