"""guestAgentPing probe: `guest-ping` through the daemon's GuestAccess, within timeoutSeconds.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (guestAgentPing, as
KubeVirt runs it through libvirt's qemuAgentCommand). Unlike the other handlers, an
agent that is not connected or does not answer is this probe's clean negative answer
(FAILURE), not an ERROR: it is exactly what the probe exists to notice (KubeVirt's
"stop qemu-ga: not ready" scenario). Suppression while paused or migrating is the
prober's job (access.suppression_reason()), for every probe kind.
"""

from __future__ import annotations

from vmhealth import spec
from vmhealth.monitor.interfaces import (
    AgentError,
    AgentUnavailable,
    GuestAccess,
    Outcome,
    ProbeResult,
)
from vmhealth.monitor.probes.common import ProbeClock, with_timeout

GUEST_PING = {"execute": "guest-ping"}


async def run_agent_ping_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    assert isinstance(probe.handler, spec.GuestAgentPing)
    clock = ProbeClock()
    timeout = probe.timeout_seconds
    try:
        # GuestAccess enforces the timeout; ours is the backstop for a seam that does not.
        await with_timeout(access.agent_command(dict(GUEST_PING), timeout), timeout + 1)
    except AgentUnavailable as exc:
        return clock.result(Outcome.FAILURE, f"guest agent unavailable: {exc}")
    except AgentError as exc:
        return clock.result(Outcome.FAILURE, f"guest-ping failed: {exc}")
    except TimeoutError:
        return clock.result(Outcome.FAILURE, f"guest-ping got no answer within {timeout}s")
    return clock.result(Outcome.SUCCESS, "guest agent answered guest-ping")
