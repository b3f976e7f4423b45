"""Liveness catches guests that stop answering at all, on real TCG guests.

The other e2e tests kill one service in a healthy guest, whose kernel still answers
with resets. Here the guest's kernel panics and hangs (`panic=0`: QEMU keeps running and
libvirt says "running"), or its qemu-guest-agent is frozen (SIGSTOP): no answer, no
reset, no ARP, no agent. Each liveness kind must restart such a guest within
periodSeconds x failureThreshold + timeoutSeconds + one period +
terminationGracePeriodSeconds + 3 s, with KubeVirt's default period (10 s) and
threshold (3), and the new run must be live again.

All the guests boot together and hang together (module fixture `hung`), so the module
costs one boot and one bound, not one per kind; each test then checks one guest. A
panicked TCG guest spins a host core (the kernel's panic loop), which is why the
scenarios share one window rather than run one after another.

libvirtd serves here at most CLIENT_REQUESTS calls of one client connection at once
(max_client_requests; its default is 5), fewer than the guests whose agents hang
together, and the daemon's agent_calls_per_connection is set below it, as
docs/daemon.md asks: a hung agent must neither hold up the daemon's control calls
(state, the restart itself) nor another guest's agent call, and each hung guest must
be restarted within its own bound (docs/security.md, "Guest agents").
"""

from __future__ import annotations

import configparser
import json
import re
import time

import pytest

from tools.sandbox import agent as harness_agent
from tools.sandbox.daemon import (
    BOOT_TIMEOUT,
    DaemonProcess,
    current_run_id,
    define_with_spec,
    wait_status,
)
from tools.sandbox.waiting import wait_until

pytestmark = pytest.mark.e2e

# libvirtd's max_client_requests in this module: below the 7 guests whose agents hang
# (4 panicked, 2 frozen, 1 frozen briefly), so one connection could not carry them.
CLIENT_REQUESTS = 2
HTTP_PORT = 1500
TCP_PORT = 1501
KUBEVIRT_DEFAULTS = {"periodSeconds": 10, "timeoutSeconds": 1, "failureThreshold": 3}
GRACE = 5  # a hung guest ignores the ACPI shutdown: the whole grace period is waited
BOUND = 10 * 3 + 1 + 10 + GRACE + 3
# The boot is gated by a fast startup probe, not by a guess of initialDelaySeconds.
BOOTED = {"startupProbe": {"guestAgentPing": {}, "periodSeconds": 1,
                           "failureThreshold": BOOT_TIMEOUT}}
LIVENESS = {
    "http": {"httpGet": {"port": HTTP_PORT, "path": "/"}},
    "tcp": {"tcpSocket": {"port": TCP_PORT}},
    "exec": {"exec": {"command": ["true"]}},
    "ping": {"guestAgentPing": {}},
}
PANIC = ["sh", "-c", "sleep 0.5; echo c > /proc/sysrq-trigger"]
# Freeze qemu-ga for good; a child of the agent does it, after the agent has answered.
FREEZE = 'sleep 0.5; kill -STOP "$1"'
# Freeze it for 12 s, then let it run again: fewer failures than the threshold.
FREEZE_BRIEFLY = 'sleep 0.5; kill -STOP "$1"; sleep 12; kill -CONT "$1"'


# Timeouts allow for the host's CPU, not for the agents: each panicked TCG guest spins
# a host core in the kernel's panic loop, and this 2-core machine then runs the healthy
# guest's own commands slowly (a `cat` took over 1 s). Thresholds of 1 make any failure
# the hung agents caused visible.
HEALTHY_SPEC = {
    **BOOTED,
    "readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy.txt"]},
                       "periodSeconds": 2, "timeoutSeconds": 5, "failureThreshold": 1},
    "livenessProbe": {"guestAgentPing": {}, "periodSeconds": 1, "timeoutSeconds": 3,
                      "failureThreshold": 1},
}


def _boot(guest_factory, name: str, spec: dict):
    guest = guest_factory.create(name, start=False, http_port=HTTP_PORT, tcp_port=TCP_PORT,
                                 watchdog_action=None, extra_cmdline=("panic=0",))
    define_with_spec(guest, spec)
    guest.start()
    return guest


def _spec(liveness: dict) -> dict:
    return {**BOOTED, "terminationGracePeriodSeconds": GRACE,
            "livenessProbe": {**liveness, **KUBEVIRT_DEFAULTS}}


def _fire_and_forget(guest, argv: list[str]) -> None:
    """guest-exec without waiting: the agent that would report the exit is gone."""
    harness_agent.command(guest.dom, "guest-exec", {"path": argv[0], "arg": argv[1:]})


def _freeze_agent(guest, script: str) -> None:
    pid = guest.service_pid("qemu-ga")
    _fire_and_forget(guest, ["sh", "-c", script, "sh", str(pid)])


@pytest.fixture(scope="module")
def few_client_requests(restart_libvirtd):
    """libvirtd serving CLIENT_REQUESTS calls per client at once, for this module."""
    restart_libvirtd(max_client_requests=CLIENT_REQUESTS)
    yield
    restart_libvirtd()  # libvirtd's default again for the tests after this module


@pytest.fixture(scope="module")
def daemon(sandbox, few_client_requests):
    workdir = sandbox.log_dir / "daemon-hang"
    workdir.mkdir(exist_ok=True)
    proc = DaemonProcess(workdir, sandbox.uri)
    config = configparser.ConfigParser(interpolation=None)
    config.read(proc.config)
    config["daemon"]["agent_calls_per_connection"] = str(CLIENT_REQUESTS - 1)
    with open(proc.config, "w") as handle:
        config.write(handle)
    proc.start()
    yield proc
    proc.stop()
    print(f"daemon log: {proc.log}")


@pytest.fixture(scope="module")
def hung(guest_factory, daemon):
    """Boot every guest, wait until each is live, then hang them all at once.
    Returns {key: (guest, run id before the hang, when it was hung)}."""
    plan = {f"panic-{kind}": (kind, "panic") for kind in LIVENESS}
    plan.update({"frozen-exec": ("exec", "freeze"), "frozen-ping": ("ping", "freeze"),
                 "brief-ping": ("ping", "brief")})
    guests = {}
    for key, (kind, _) in plan.items():
        guests[key] = _boot(guest_factory, f"hang-{key}", _spec(LIVENESS[kind]))
    # Beside the hung agents: a healthy guest whose agent probes must go on succeeding.
    guests["healthy"] = _boot(guest_factory, "hang-healthy", HEALTHY_SPEC)
    for guest in guests.values():
        wait_status(daemon, guest.name, "live after the startup probe",
                    lambda e: e["probes"]["liveness"].get("lastResult", {})
                    .get("outcome") == "success")
    wait_status(daemon, "hang-healthy", "ready", lambda e: e["ready"])
    hung_at = {"healthy": (guests["healthy"], current_run_id(guests["healthy"]),
                           time.time())}
    for key, (_, how) in plan.items():
        guest = guests[key]
        run_id = current_run_id(guest)
        if how == "panic":
            _fire_and_forget(guest, PANIC)
        else:
            _freeze_agent(guest, FREEZE if how == "freeze" else FREEZE_BRIEFLY)
        hung_at[key] = (guest, run_id, time.time())  # wall clock, as the events
    return hung_at


def _assert_restarted(daemon, hung, key: str) -> None:
    """The daemon stopped the hung run within BOUND of the hang, and the new run is
    live. The stop's time is the daemon's Released event ("stopped: destroyed", when
    the restart destroys the guest after the grace period), so the guests that hung
    together are each measured on their own, whichever test looks first."""
    guest, run_id, since = hung[key]

    def released() -> float | None:
        times = [e["time"] for e in daemon.client.events(domain=guest.name)
                 if e["type"] == "Released" and e["time"] > since]
        return min(times) if times else None
    try:
        stopped_at = wait_until(released, timeout=BOUND + 60,
                                what=f"{guest.name} to be restarted", interval=0.5)
    except AssertionError:
        print(json.dumps(daemon.status(guest.name), indent=1))
        raise
    took = stopped_at - since
    print(f"{guest.name}: restart began {took:.1f}s after the hang (bound {BOUND}s)")
    assert took <= BOUND
    wait_until(lambda: current_run_id(guest) != run_id, timeout=60,
               what=f"{guest.name} to run again")
    wait_status(daemon, guest.name, "live again after the restart",
                lambda e: e["live"] and e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success" and e["state"] == "running")


@pytest.mark.parametrize("kind", list(LIVENESS))
def test_a_panicked_guest_is_restarted(daemon, hung, kind):
    _assert_restarted(daemon, hung, f"panic-{kind}")


@pytest.mark.parametrize("kind", ["exec", "ping"])
def test_a_frozen_agent_is_restarted(daemon, hung, kind):
    _assert_restarted(daemon, hung, f"frozen-{kind}")


def test_an_agent_frozen_for_less_than_the_threshold_is_not_restarted(daemon, hung):
    guest, run_id, since = hung["brief-ping"]
    # Frozen 12 s at period 10: at most 2 failures of 3. Wait past the bound.
    remaining = since + BOUND - time.time()
    if remaining > 0:
        time.sleep(remaining)
    assert current_run_id(guest) == run_id
    entry = wait_status(daemon, guest.name, "live again", lambda e: e["live"] and
                        e["probes"]["liveness"].get("lastResult", {})
                        .get("outcome") == "success", timeout=30)
    assert entry["state"] == "running"


def test_hung_agents_never_fail_a_healthy_guest(daemon, hung):
    """Four hung agents (two panicked guests, two frozen qemu-ga) at once: the healthy
    guest's exec readiness and ping liveness, with failureThreshold 1, never count a
    failure, and keep succeeding (docs/security.md, "Guest agents")."""
    guest, run_id, since = hung["healthy"]
    remaining = since + BOUND - time.time()
    if remaining > 0:
        time.sleep(remaining)  # through the whole window the others hang in
    types = [e["type"] for e in daemon.client.events(domain=guest.name)
             if e["time"] > since]
    assert not {"NotReady", "Unhealthy", "LivenessFailed"} & set(types), types
    entry = daemon.status(guest.name)
    assert entry["ready"] and entry["live"] and current_run_id(guest) == run_id
    for kind in ("readiness", "liveness"):
        last = entry["probes"][kind]["lastResult"]
        assert last["outcome"] in ("success", "skipped"), last
        assert last["time"] > time.time() - 10, last  # still being probed
    conn, response = daemon.client._request("GET", "/metrics")
    try:
        metrics = response.read().decode()
    finally:
        conn.close()
    counted = [line for line in metrics.splitlines()  # the boot's startup probe aside
               if line.startswith("vmhealth_probe_results") and guest.name in line
               and 'probe="startup"' not in line]
    assert any('outcome="success"' in line for line in counted), counted
    assert not [line for line in counted
                if 'outcome="failure"' in line and 'counted="true"' in line], counted
    # The agent calls were more at once than one connection may carry here: the
    # daemon opened connections for them, never queueing one on another's.
    opened = [int(n) for n in re.findall(
        r"opened a libvirt connection for guest-agent calls.*?connections=(\d+)",
        daemon.log.read_text(errors="replace"))]
    print(f"agent connections open at once, at most: {max(opened, default=0)}")
    assert max(opened, default=0) > CLIENT_REQUESTS, opened
