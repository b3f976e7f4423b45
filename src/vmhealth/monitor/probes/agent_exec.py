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
default) gives a FAILURE whose message names the fix. An agent that is not connected
or does not answer is a FAILURE too (KubeVirt: "if the guest agent is not available,
this probe will fail"); see common.agent_call for the other agent outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from vmhealth import spec
from vmhealth.excerpt import excerpt
from vmhealth.monitor.interfaces import AgentError, GuestAccess, Outcome, ProbeResult
from vmhealth.monitor.probes.common import (
    OUTPUT_CAP_BYTES,
    AgentProblem,
    ProbeClock,
    agent_call,
)

FIRST_POLL_SECONDS = 0.05  # most probe commands end within a few tens of milliseconds
POLL_GROWTH = 1.5
MAX_POLL_SECONDS = 0.5
# Of the (at most 10 KiB) output, what a status reason shows: a line or two.
OUTPUT_EXCERPT_CHARS = 512
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
        return await agent_call(access, command, timeout)
    except AgentProblem as problem:
        raise _AgentRefused(clock.result(problem.outcome, problem.message)) from None
    except AgentError as exc:
        if is_blocked(exc):
            raise _AgentRefused(clock.result(Outcome.FAILURE, BLOCKED_FIX)) from exc
        raise _AgentRefused(clock.result(Outcome.FAILURE, f"{name} failed: {exc}")) from exc


def _finished(status: dict[str, Any], argv: tuple[str, ...], clock: ProbeClock) -> ProbeResult:
    output = excerpt(decode_output(status), OUTPUT_EXCERPT_CHARS)
    suffix = f"; output: {output}" if output else ""
    program = excerpt(argv[0], 64)
    if status.get("signal") is not None:
        return clock.result(Outcome.FAILURE, f"{program} killed by signal "
                                             f"{excerpt(status['signal'], 32)}{suffix}")
    code = status.get("exitcode")
    if code == 0:
        return clock.result(Outcome.SUCCESS, f"{program} exited 0{suffix}")
    return clock.result(Outcome.FAILURE, f"{program} exited {excerpt(code, 32)}{suffix}")


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
        if not isinstance(pid, int) or isinstance(pid, bool):
            return clock.result(Outcome.ERROR,
                                f"guest-exec returned no pid ({excerpt(repr(started))})")
        interval = FIRST_POLL_SECONDS
        skipped = None  # the last poll, when another call to this agent was in flight
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await asyncio.sleep(min(interval, remaining))
            interval = min(interval * POLL_GROWTH, MAX_POLL_SECONDS)
            # A status poll gets at least a short moment even at the deadline's edge.
            try:
                status = await _agent(access, status_command(pid),
                                      max(deadline - loop.time(), 0.2), clock)
            except _AgentRefused as refused:
                if refused.result.outcome is Outcome.SKIPPED:
                    skipped = refused.result  # another probe's call: poll again later
                    continue
                raise
            skipped = None
            if isinstance(status, dict) and status.get("exited"):
                return _finished(status, handler.command, clock)
        if skipped is not None:
            # The command may well have exited: we could not ask at the deadline. Not
            # the guest's failure: an ERROR, retried.
            return clock.result(Outcome.ERROR, f"could not read guest-exec-status at the "
                                               f"deadline: {skipped.message}")
    except _AgentRefused as refused:
        return refused.result
    return clock.result(Outcome.FAILURE,
                        f"{excerpt(handler.command[0], 64)} did not exit within "
                        f"{probe.timeout_seconds}s (guest pid {pid} keeps running)")
