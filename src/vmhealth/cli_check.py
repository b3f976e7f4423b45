"""`vmhealth check DOMAIN --liveness`: the health signal for a cluster's monitor.

Pacemaker's VirtualDomain resource agent runs its `monitor_scripts` at every monitor
and at the end of every start and migration, and takes any non-zero exit as a failure
of the resource, which it then recovers (stop, start, relocate after
migration-threshold failures). So this command answers exactly one question, "has
liveness failed?", and says yes (exit 1) only when vmhealth has seen it fail:

    exit 1  the liveness probe (or the startup probe, whose failure Kubernetes treats
            alike) crossed its failureThreshold, and the domain is not in a state in
            which vmhealth counts no failure (paused, migrating, saving...)
    exit 0  liveness holds, or is not decided: the startup probe is still running,
            initialDelaySeconds has not passed, the domain is suppressed, the daemon has
            not adopted the domain yet (it does so a moment after the start), or the
            domain has no liveness probe
    exit 0  the daemon is unreachable (no socket, refused, no answer within --timeout,
            an answer that is not the status): a warning on stderr. `--if-unreachable
            fail` makes that exit 1.
    exit 2  bad usage (no domain named and no VirtualDomain environment to read it from)

Readiness never makes it fail: a domain that is warming up or whose application is
drained is not broken, and restarting it for that is what Kubernetes never does.

Why an unreachable daemon is "not failed" by default: the daemon is a per-host
observer, like kubelet. When kubelet stops, containers keep running and nothing
restarts them because no probe runs; a monitor that failed whenever the daemon is
down would turn every daemon upgrade or crash into the cluster restarting every VM on
the host, the worst answer to a fault of the observer. The cluster still sees the
domain itself (VirtualDomain checks that it runs before it runs this command).

One request to the daemon's unix socket (GET /status/<domain>); nothing else is read
but, when DOMAIN is omitted, the domain's name from the XML file VirtualDomain starts
it from ($OCF_RESKEY_config), because monitor_scripts runs each word as a program
without arguments (docs/cluster.md has the two-line wrapper).
"""

from __future__ import annotations

import http.client
import os
from typing import Any

import click

from vmhealth.cli_context import NotOk, UsageFailure
from vmhealth.excerpt import excerpt
from vmhealth.monitor.client import DEFAULT_SOCKET, ApiClient, ApiError, ApiUnavailable
from vmhealth.spec_rules import ACTING_LIVENESS_ACTIONS, RUN_STRATEGY_RESTARTS
from vmhealth.terminal import echo

DEFAULT_TIMEOUT_SECONDS = 5.0
# What VirtualDomain exports to its monitor scripts: the domain's XML file.
OCF_CONFIG_VARIABLE = "OCF_RESKEY_config"
REASON_LIMIT = 300


def liveness_verdict(entry: dict[str, Any]) -> tuple[bool, str]:
    """(failed, what to say) from the daemon's status of one domain. A field of
    another shape (a daemon of another version) reads as absent: only a liveness
    state the daemon clearly published as failed fails the monitor."""
    probes = _mapping(entry.get("probes"))
    suppressed = entry.get("suppressed")
    startup = _mapping(probes.get("startup"))
    liveness = _mapping(probes.get("liveness"))
    if suppressed:
        # The daemon counts no failure and takes no action in these states.
        return False, f"undecided: domain {suppressed}"
    if startup.get("healthy") is False:
        return True, f"startup failed: {startup.get('reason', '')}"
    if startup and startup.get("healthy") is not True:
        return False, f"undecided: startup probe running ({startup.get('reason', '')})"
    if not liveness:
        return False, "undecided: no liveness probe"
    if liveness.get("healthy") is False:
        return True, str(liveness.get("reason", "liveness failed"))
    return False, str(liveness.get("reason", "alive"))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def domain_from_ocf_environment() -> str:
    """The domain's name from VirtualDomain's config file ($OCF_RESKEY_config)."""
    path = os.environ.get(OCF_CONFIG_VARIABLE)
    if not path:
        raise UsageFailure("name the domain (vmhealth check DOMAIN --liveness), or run "
                           f"under VirtualDomain, which sets {OCF_CONFIG_VARIABLE}")
    from vmhealth.xmlsafe import XmlError, parse_xml  # lxml: only on this path

    try:
        with open(path, "rb") as config:
            root = parse_xml(config.read(), f"{OCF_CONFIG_VARIABLE} {path}")
    except (OSError, XmlError) as exc:
        raise UsageFailure(f"cannot read the domain's name from {OCF_CONFIG_VARIABLE} "
                           f"({path}): {exc}; name the domain instead") from None
    name = (root.findtext("name") or "").strip()
    if not name:
        raise UsageFailure(f"{OCF_CONFIG_VARIABLE} {path} has no <name>; name the domain "
                           "instead")
    return name


@click.command("check")
@click.argument("domain", required=False)
@click.option("--liveness", is_flag=True,
              help="Fail only when liveness has failed (the one question check answers).")
@click.option("--socket", "socket_path", envvar="VMHEALTH_SOCKET", default=DEFAULT_SOCKET,
              show_default=True, help="The daemon's API socket.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=DEFAULT_TIMEOUT_SECONDS,
              show_default=True, help="Seconds to wait for the daemon's answer.")
@click.option("--if-unreachable", type=click.Choice(["ok", "fail"]), default="ok",
              show_default=True,
              help="Exit code when the daemon cannot be asked: ok (0, with a warning: a "
                   "daemon upgrade must not make the cluster restart every VM) or fail.")
def check_command(domain: str | None, liveness: bool, socket_path: str, timeout: float,
                  if_unreachable: str) -> None:
    """Exit 1 only when DOMAIN's liveness has failed: for cluster monitors.

    \b
    Examples:
      vmhealth check web1 --liveness
      OCF_RESKEY_config=/etc/cluster/web1.xml vmhealth check --liveness

    Exit 0 while liveness holds or is not decided yet (startup probe, initial delay,
    paused or migrating, not adopted yet) and, with a warning, when the daemon cannot
    be reached. Readiness never fails it. DOMAIN defaults to the <name> in
    $OCF_RESKEY_config (Pacemaker's VirtualDomain). docs/cluster.md.
    """
    if not liveness:
        raise UsageFailure("name the question: vmhealth check DOMAIN --liveness")
    name = domain or domain_from_ocf_environment()
    try:
        entry = ApiClient(socket_path, timeout=timeout).status(name)
    except ApiError as exc:
        if exc.status == 404:
            echo(f"{name}: liveness undecided: not monitored (not adopted yet, or no "
                 "health spec)")
            return
        _unreachable(name, f"the daemon answered {exc.status}: {excerpt(exc, REASON_LIMIT)}",
                     if_unreachable)
        return
    except (ApiUnavailable, OSError, http.client.HTTPException, ValueError) as exc:
        # OSError: the answer did not come in time; ValueError: it is not JSON
        _unreachable(name, excerpt(exc, REASON_LIMIT), if_unreachable)
        return
    if not isinstance(entry, dict):
        _unreachable(name, "the daemon's answer is not a domain status", if_unreachable)
        return
    failed, reason = liveness_verdict(entry)
    echo(f"{name}: liveness {'FAILED' if failed else 'ok'}: {excerpt(reason, REASON_LIMIT)}")
    if failed:
        raise NotOk()


def _unreachable(name: str, why: str, policy: str) -> None:
    verdict = "failing as --if-unreachable fail asks" if policy == "fail" else (
        "not failing (--if-unreachable ok)")
    echo(f"{name}: warning: liveness unknown, {why}; {verdict}", err=True)
    if policy == "fail":
        raise NotOk()


def cluster_conflicts(spec: Any) -> list[str]:
    """What in `spec` makes vmhealth act on a domain that a cluster manager manages
    (`vmhealth apply --cluster-managed`): two actors recovering one domain restart it
    twice, or start it on a host the cluster has just moved it away from."""
    action = spec.on_liveness_failure.value
    problems = []
    if action in ACTING_LIVENESS_ACTIONS:
        problems.append(f"onLivenessFailure: {action}: vmhealth would {action} the domain "
                        "while the cluster recovers it too; use onLivenessFailure: report "
                        "(annotation vmhealth.dev/on-liveness-failure: report) and let the "
                        "cluster act on `vmhealth check --liveness` (docs/cluster.md)")
    if any(RUN_STRATEGY_RESTARTS[spec.run_strategy.value]):
        problems.append(f"runStrategy: {spec.run_strategy.value}: vmhealth would start "
                        "the domain again after a stop the cluster made; use Manual")
    return problems


if __name__ == "__main__":
    # `python3 -m vmhealth.cli_check [DOMAIN] --liveness`: the same command without
    # importing the other commands (about half the CPU of `vmhealth check`,
    # benchmarks/bench_check.py), for monitors that run it every few seconds.
    check_command(prog_name="vmhealth check")
