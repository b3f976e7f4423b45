"""tcpSocket probe: connect within timeoutSeconds, then close; success = connected.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (tcpSocket). The
host is the spec's host, else the guest's addresses (IPv4 and IPv6) tried in order,
all within one timeoutSeconds. The connection is closed with a reset (see dial.py).
Runs from callbacks, without a task (common.NetworkRun).
"""

from __future__ import annotations

from typing import Callable

from vmhealth import spec
from vmhealth.monitor.interfaces import GuestAccess, OnDone, Outcome, Recipe
from vmhealth.monitor.probes.common import (
    ConnectFailed,
    NetworkRun,
    describe_os_error,
    host_for_url,
)
from vmhealth.monitor.probes.dial import Sink


class TcpProbeStarter:
    """Starts runs of one tcpSocket probe; keeps its success message per address."""

    __slots__ = ("probe", "handler", "_connected_messages", "repeatable")

    def __init__(self, probe: spec.Probe) -> None:
        assert isinstance(probe.handler, spec.TcpSocket)
        self.probe = probe
        self.handler = probe.handler
        self._connected_messages: dict[str, str] = {}
        # What the last finished run's success may be repeated as (native_lane.py).
        self.repeatable: Recipe | None = None

    def __call__(self, access: GuestAccess, on_done: OnDone) -> Callable:
        return _TcpRun(self, access, on_done).start(self.handler.host)

    def connected_message(self, host: str) -> str:
        message = self._connected_messages.get(host)
        if message is None:
            if len(self._connected_messages) > 64:  # guest addresses change; stay small
                self._connected_messages.clear()
            message = f"connected to {host_for_url(host)}:{self.handler.port}"
            self._connected_messages[host] = message
        return message

    def timeout_message(self) -> str:
        return (f"tcp connect to port {self.handler.port} timed out after "
                f"{self.probe.timeout_seconds}s")


class _TcpRun(NetworkRun):
    __slots__ = ("_starter",)

    def __init__(self, starter: TcpProbeStarter, access: GuestAccess, on_done: OnDone) -> None:
        super().__init__(starter.probe.timeout_seconds, access, on_done)
        self._starter = starter
        starter.repeatable = None

    def begin(self, hosts: list[str]) -> None:
        self.dial(hosts, self._starter.handler.port)

    def exchanged(self, host: str | None, sink: Sink | None,
                  error: BaseException | None) -> None:
        if error is None and host is not None:
            message = self._starter.connected_message(host)
            self._starter.repeatable = self.recipe(host, None, 0, message)
            self.finish(Outcome.SUCCESS, message)
        elif isinstance(error, ConnectFailed):
            self.finish(Outcome.FAILURE, f"tcp connect failed: {error}")
        else:  # reset as it connected
            detail = describe_os_error(error) if isinstance(error, OSError) else str(error)
            self.finish(Outcome.FAILURE, f"tcp connect failed: {detail}")

    def timeout_message(self) -> str:
        return self._starter.timeout_message()
