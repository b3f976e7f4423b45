"""qemu-guest-agent commands from the host, each with a positive timeout.

qemuAgentCommand blocks the calling thread; the harness calls it from test threads
only, never from the libvirt event loop thread.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from .waiting import wait_until


def command(dom: libvirt.virDomain, execute: str, arguments: dict | None = None,
            timeout: int = 5) -> object:
    """Run one agent command; return its "return" value."""
    if timeout <= 0:
        raise ValueError("agent timeout must be positive (0 and -1 mean no/unbounded wait)")
    request: dict = {"execute": execute}
    if arguments is not None:
        request["arguments"] = arguments
    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0)
    return json.loads(reply)["return"]


def ping(dom: libvirt.virDomain, timeout: int = 5) -> bool:
    command(dom, "guest-ping", timeout=timeout)
    return True


def wait_for_ping(dom: libvirt.virDomain, timeout: float = 90) -> float:
    """Wait until guest-ping answers; return the seconds it took."""
    start = time.monotonic()
    wait_until(lambda: ping(dom, timeout=2), timeout=timeout, interval=0.5,
               what=f"guest-ping from {dom.name()}")
    return time.monotonic() - start


@dataclass(frozen=True)
class ExecResult:
    exitcode: int | None
    signal: int | None
    stdout: str
    stderr: str


def _decode(status: dict, key: str) -> str:
    return base64.b64decode(status.get(key, "")).decode(errors="replace")


def guest_exec(dom: libvirt.virDomain, path: str, args: list[str] | None = None,
               timeout: float = 30, stdin: bytes | None = None) -> ExecResult:
    """guest-exec, then poll guest-exec-status until the command exited. `stdin`, if
    given, is the command's standard input (qemu-ga's input-data)."""
    request = {"path": path, "arg": list(args or []), "capture-output": True}
    if stdin is not None:
        request["input-data"] = base64.b64encode(stdin).decode()
    started = command(dom, "guest-exec", request)
    pid = started["pid"]

    def exited() -> dict | None:
        status = command(dom, "guest-exec-status", {"pid": pid})
        return status if status.get("exited") else None

    status = wait_until(exited, timeout=timeout, interval=0.2,
                        what=f"{path} (guest pid {pid}) to exit in {dom.name()}")
    return ExecResult(
        exitcode=status.get("exitcode"),
        signal=status.get("signal"),
        stdout=_decode(status, "out-data"),
        stderr=_decode(status, "err-data"),
    )
