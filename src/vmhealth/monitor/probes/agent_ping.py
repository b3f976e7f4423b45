"""guestAgentPing probe: `guest-ping` through the daemon's GuestAccess, within timeoutSeconds.

Semantics: kubelet/KubeVirt (docs/probes.md), "Handlers" (guestAgentPing, as
KubeVirt runs it through libvirt's qemuAgentCommand). An agent that is not connected
or does not answer within timeoutSeconds (libvirt's measure) is a FAILURE: it is
exactly what the probe exists to notice. A previous agent call still in flight skips
the tick (SKIPPED); no verdict from libvirt in time is an ERROR (see agent_outcome).
Suppression while paused or migrating is the prober's job
(access.suppression_reason()), for every probe kind.
"""

from __future__ import annotations

from vmhealth import spec
from vmhealth.monitor.interfaces import AgentError, GuestAccess, Outcome, ProbeResult
from vmhealth.monitor.probes.common import AgentProblem, ProbeClock, agent_call

GUEST_PING = {"execute": "guest-ping"}


async def run_agent_ping_probe(probe: spec.Probe, access: GuestAccess) -> ProbeResult:
    assert isinstance(probe.handler, spec.GuestAgentPing)
    clock = ProbeClock()
    timeout = probe.timeout_seconds
    try:
        await agent_call(access, dict(GUEST_PING), timeout)
    except AgentProblem as problem:
        return clock.result(problem.outcome, problem.message)
    except AgentError as exc:
        return clock.result(Outcome.FAILURE, f"guest-ping failed: {exc}")
    return clock.result(Outcome.SUCCESS, "guest agent answered guest-ping")
