"""tcpSocket probe: connect within timeoutSeconds, then close; success = connected.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (tcpSocket). The
host is the spec's host, else the guest's addresses (IPv4 and IPv6) tried in order,
all within one timeoutSeconds. The connection is closed with a reset (see dial.py).
"""

from __future__ import annotations

from vmhealth import spec
from vmhealth.monitor.interfaces import GuestAccess, Outcome, ProbeResult
from vmhealth.monitor.probes.common import (
    ConnectFailed,
    ProbeClock,
    dial_first,
    host_for_url,
    run_on_targets,
)


async def run_tcp_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    handler = probe.handler
    assert isinstance(handler, spec.TcpSocket)

    async def connect(hosts: list[str], clock: ProbeClock, deadline: float) -> ProbeResult:
        try:
            host, _ = await dial_first(hosts, handler.port, deadline)
        except ConnectFailed as exc:
            return clock.result(Outcome.FAILURE, f"tcp connect failed: {exc}")
        return clock.result(Outcome.SUCCESS, f"connected to {host_for_url(host)}:{handler.port}")

    return await run_on_targets(
        probe, handler.host, access, connect,
        f"tcp connect to port {handler.port} timed out after {probe.timeout_seconds}s")
