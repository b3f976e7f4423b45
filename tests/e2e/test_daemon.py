"""The monitor daemon against the real sandbox: libvirtd, TCG QEMU guests, qemu-ga.

Mirrors KubeVirt's functional probe tests (docs/probe-semantics.md). The daemon runs as a
subprocess of the test with its own config, socket and spool in a temporary directory;
all guests boot together in one module fixture, then each test waits for what it needs.
Probe periods are 1 s so the suite stays fast.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import libvirt
import pytest

from tools.sandbox import agent as harness_agent
from tools.sandbox import paths
from tools.sandbox.daemon import (
    BOOT_TIMEOUT,
    DaemonProcess,
    current_run_id,
    define_with_spec,
    wait_status,
)
from tools.sandbox.waiting import wait_until

pytestmark = pytest.mark.e2e

HTTP_PORT = 1500
TCP_PORT = 1501
FAST = {"periodSeconds": 1, "timeoutSeconds": 1}
# A liveness restart must begin within periodSeconds x failureThreshold (2) +
# timeoutSeconds + 2 s of the failure (the bound).
RESTART_BOUND = 1 * 2 + 1 + 2
# Liveness waits for the boot: a startup probe gates it (no initialDelaySeconds guess).
BOOTED = {"startupProbe": {"guestAgentPing": {}, **FAST, "failureThreshold": BOOT_TIMEOUT}}

WEB_SPEC = {  # TCP readiness, HTTP liveness that restarts at once (grace 0)
    **BOOTED,
    "readinessProbe": {"tcpSocket": {"port": TCP_PORT}, **FAST},
    "livenessProbe": {"httpGet": {"port": HTTP_PORT, "path": "/"}, **FAST,
                      "failureThreshold": 2},
    "terminationGracePeriodSeconds": 0,
}
AGENT_SPEC = {"readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy.txt"]}, **FAST}}
PAUSED_SPEC = {  # ping liveness: a user pause must not restart it
    **BOOTED,
    "livenessProbe": {"guestAgentPing": {}, **FAST, "failureThreshold": 2},
    "terminationGracePeriodSeconds": 0,
}

# KubeVirt's runStrategy Always: a watchdog poweroff is not the end of the VM.
ALWAYS_SPEC = {"readinessProbe": {"guestAgentPing": {}, **FAST}, "runStrategy": "Always"}


def _restart_with_spec(guest, spec: dict) -> None:
    """A new spec for the next run: a fresh domain run, so the probes start from their
    initial state (`vmhealth apply` in place is test_apply_to_a_running_domain_...)."""
    guest.dom.destroy()
    define_with_spec(guest, spec)
    guest.start()


@pytest.fixture(scope="module")
def daemon(sandbox):
    workdir = sandbox.log_dir / "daemon"  # kept with the run's other logs
    workdir.mkdir(exist_ok=True)
    proc = DaemonProcess(workdir, sandbox.uri)
    proc.start()
    yield proc
    proc.stop()
    print(f"daemon log: {proc.log}")


@pytest.fixture(scope="module")
def guests(guest_factory, daemon):
    made = {
        "web": guest_factory.create("dmn-web", start=False, http_port=HTTP_PORT,
                                    tcp_port=TCP_PORT),
        "agent": guest_factory.create("dmn-agent", start=False),
        "paused": guest_factory.create("dmn-paused", start=False, watchdog_feeder=True),
        "always": guest_factory.create("dmn-always", start=False, watchdog_feeder=True),
    }
    for key, spec in (("web", WEB_SPEC), ("agent", AGENT_SPEC), ("paused", PAUSED_SPEC),
                      ("always", ALWAYS_SPEC)):
        define_with_spec(made[key], spec)
        made[key].start()
    return made


def _ready_for(daemon, domain: str, seconds: float) -> list[bool]:
    """Readiness sampled every 0.5 s for `seconds`."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(daemon.status(domain)["ready"])
        time.sleep(0.5)
    return samples


def test_tcp_readiness_ready_once_the_guest_listens(daemon, guests):
    wait_status(daemon, "dmn-web", "ready", lambda e: e["ready"])
    result = daemon.cli("wait", "dmn-web", "--for", "ready", "--timeout", "10s")
    assert result.returncode == 0, result.stderr
    assert daemon.cli("status", "dmn-web").returncode == 0
    # Settled, both probes move to the native lane, which keeps probing the guest:
    # status shows its successes arriving.
    _wait_in_native_lane(daemon, "dmn-web", "readiness", "liveness")
    first = daemon.status("dmn-web")["probes"]["readiness"]["lastResult"]
    entry = wait_status(daemon, "dmn-web", "the lane's successes in the status",
                        lambda e: e["probes"]["readiness"]["lastResult"]["time"]
                        >= first["time"] + 1.5, timeout=30)
    later = entry["probes"]["readiness"]["lastResult"]
    assert entry["ready"] and entry["probes"]["readiness"]["nativeLane"]
    assert later["outcome"] == "success" and later["time"] >= first["time"] + 1.5
    assert later["message"] == first["message"]


def _wait_in_native_lane(daemon, domain: str, *kinds: str) -> None:
    wait_status(daemon, domain, f"{', '.join(kinds)} in the native lane",
                lambda e: all(e["probes"][kind]["nativeLane"] for kind in kinds))


def test_exec_readiness_cat_false_and_a_command_that_never_ends(daemon, guests):
    wait_status(daemon, "dmn-agent", "ready by exec cat", lambda e: e["ready"])
    _restart_with_spec(guests["agent"], {"readinessProbe": {
        "exec": {"command": ["false"]}, **FAST}})
    wait_status(daemon, "dmn-agent", "re-adopted with exec false",
                 lambda e: e["probes"]["readiness"].get("lastResult", {}).get("outcome")
                 == "failure" and "false" in e["probes"]["readiness"]["lastResult"]["message"],
                 timeout=BOOT_TIMEOUT)
    assert not any(_ready_for(daemon, "dmn-agent", 4))
    _restart_with_spec(guests["agent"], {"readinessProbe": {
        "exec": {"command": ["sleep", "1000"]}, **FAST}})
    wait_status(daemon, "dmn-agent", "exec sleep timing out",
                 lambda e: e["probes"]["readiness"].get("lastResult", {}).get("outcome")
                 == "failure" and "sleep" in e["probes"]["readiness"]["lastResult"]["message"],
                 timeout=BOOT_TIMEOUT)
    # The daemon keeps answering while guest commands hang.
    started = time.monotonic()
    assert not any(_ready_for(daemon, "dmn-agent", 4))
    assert daemon.cli("status", "-o", "json").returncode == 0
    print(f"8 status calls while exec hangs took {time.monotonic() - started:.1f}s")


def test_ping_readiness_follows_the_agent(daemon, guests):
    agent = guests["agent"]
    _restart_with_spec(agent, {"readinessProbe": {"guestAgentPing": {}, **FAST,
                                                  "failureThreshold": 1}})
    wait_status(daemon, "dmn-agent", "ready by ping", lambda e: e["ready"])
    pid = agent.service_pid("qemu-ga")
    # Stop qemu-ga for 12 s, then let it run again: a child of the agent does both, so
    # nobody needs the (stopped) agent to bring it back.
    # Started, not waited for: the agent that would report its exit is stopped.
    harness_agent.command(agent.dom, "guest-exec", {
        "path": "sh", "arg": ["-c", 'kill -STOP "$1"; sleep 12; kill -CONT "$1"', "sh",
                              str(pid)]})
    wait_status(daemon, "dmn-agent", "not ready while qemu-ga is stopped",
                 lambda e: not e["ready"], timeout=15)
    wait_status(daemon, "dmn-agent", "ready again", lambda e: e["ready"], timeout=40)


def test_ping_liveness_does_not_restart_a_user_paused_domain(daemon, guests):
    paused = guests["paused"]
    wait_status(daemon, "dmn-paused", "adopted", lambda e: e["state"] == "running")
    paused.wait_for_agent(timeout=BOOT_TIMEOUT)
    run_id = current_run_id(paused)
    wait_status(daemon, "dmn-paused", "ready before the pause", lambda e: e["ready"])
    paused.dom.suspend()
    wait_status(daemon, "dmn-paused", "suppressed",
                 lambda e: e["suppressed"] == "paused by the user", timeout=10)
    # KubeVirt: a paused VMI is not ready (kubevirt.io/virtual-machine-unpaused).
    assert _ready_answer(daemon, "dmn-paused") == (
        503, "not ready: domain paused by the user\n")
    time.sleep(6)  # 6 periods of failureThreshold 2: it would have been restarted
    assert current_run_id(paused) == run_id
    assert paused.dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    assert not daemon.status("dmn-paused")["ready"]
    paused.dom.resume()
    wait_status(daemon, "dmn-paused", "live again", lambda e: e["live"] and not
                 e["suppressed"], timeout=20)
    wait_until(lambda: _ready_answer(daemon, "dmn-paused")[0] == 200, timeout=20,
               what="/ready/dmn-paused to answer 200 after the resume")
    types = [e["type"] for e in daemon.client.events(domain="dmn-paused")]
    assert "NotReady" in types and "Ready" in types, types


def _ready_answer(daemon, domain: str) -> tuple[int, str]:
    """What a load balancer polling /ready/<domain> gets."""
    conn, response = daemon.client._request("GET", f"/ready/{domain}")
    try:
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_watchdog_event_is_recorded(daemon, guests, recorder):
    """The watchdog powers the guest off; with the default runStrategy (Manual) it
    stays off, as before run strategies."""
    paused = guests["paused"]
    paused.wait_for_agent(timeout=BOOT_TIMEOUT)  # kill_service goes through the agent
    paused.kill_service("watchdog", "KILL")
    recorder.wait_for("dmn-paused", "watchdog", timeout=60)
    def recorded():
        text = daemon.cli("events").stdout
        return "Watchdog" in text and "dmn-paused" in text and "poweroff" in text
    wait_until(recorded, timeout=20, what="the watchdog event in `vmhealth events`")
    wait_until(lambda: not paused.dom.isActive(), timeout=30, what="dmn-paused to be off")
    wait_until(lambda: not daemon.client.status()["actionsInFlight"], timeout=30,
               what="no action in flight")
    time.sleep(3)  # a start would come at once (the first one has no back-off)
    assert not paused.dom.isActive()
    types = [e["type"] for e in daemon.client.events(domain="dmn-paused")]
    assert not [t for t in types if t.startswith("RunStrategy")], types


def test_run_strategy_always_starts_a_watchdog_poweroff_again(daemon, guests, recorder):
    always = guests["always"]
    wait_status(daemon, "dmn-always", "ready", lambda e: e["ready"])  # agent answers
    run_id = current_run_id(always)
    always.kill_service("watchdog", "KILL")
    recorder.wait_for("dmn-always", "watchdog", timeout=60)
    started = wait_until(
        lambda: [e for e in daemon.client.events(domain="dmn-always")
                 if e["type"] == "RunStrategyStart"],
        timeout=60, what="the daemon to start dmn-always again")
    assert started[0]["fields"]["runStrategy"] == "Always", started
    assert started[0]["fields"]["cause"] == "watchdog", started
    wait_until(lambda: always.dom.isActive() and current_run_id(always) != run_id,
               timeout=30, what="dmn-always running again")
    wait_status(daemon, "dmn-always", "ready again", lambda e: e["ready"])


def _assert_restarted_within(daemon, guest, kill, bound: float) -> None:
    """Run `kill` and check the daemon restarts the guest within `bound` seconds, then
    that the new run is live again."""
    run_id = current_run_id(guest)
    kill()
    killed = time.monotonic()
    try:
        wait_until(lambda: not guest.dom.isActive() or current_run_id(guest) != run_id,
                   timeout=30, what=f"{guest.name} to be restarted", interval=0.1)
    except AssertionError:
        print(json.dumps(daemon.status(guest.name), indent=1))
        raise
    took = time.monotonic() - killed
    print(f"{guest.name}: restart began {took:.1f}s after the kill (bound {bound}s)")
    assert took <= bound
    wait_status(daemon, guest.name, "live again after the restart",
                lambda e: e["live"] and e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success")


def test_http_liveness_restarts_within_its_bound(daemon, guests, recorder):
    web = guests["web"]
    wait_status(daemon, "dmn-web", "ready", lambda e: e["ready"])
    _wait_in_native_lane(daemon, "dmn-web", "liveness")  # the failure starts in the lane
    _assert_restarted_within(daemon, web, lambda: web.kill_service("httpd", "KILL"),
                             bound=RESTART_BOUND)
    wait_status(daemon, "dmn-web", "running again and ready", lambda e: e["ready"])


def test_daemon_killed_and_restarted_resumes_without_restarting(daemon, guests):
    web = guests["web"]
    wait_status(daemon, "dmn-web", "ready", lambda e: e["ready"])
    run_id = current_run_id(web)
    daemon.kill(signal.SIGKILL)
    daemon.start()
    wait_status(daemon, "dmn-web", "ready after the daemon restart", lambda e: e["ready"],
                 timeout=30)
    time.sleep(5)
    assert current_run_id(web) == run_id
    assert daemon.status("dmn-web")["live"]


def _write_spec(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_apply_to_a_running_domain_takes_effect_without_a_restart(daemon, guests, sandbox,
                                                                   tmp_path):
    """`vmhealth apply` on a running domain updates its live metadata; the daemon follows
    at once (libvirt's metadata-change event), with no restart of the guest."""
    agent = guests["agent"]
    ready_spec = {"readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy.txt"]},
                                     **FAST}}
    applied = daemon.cli("--connect", sandbox.uri, "apply", "dmn-agent", "-f",
                         _write_spec(tmp_path, ready_spec))
    assert applied.returncode == 0, applied.stderr
    assert "updated the running domain's metadata" in applied.stdout
    wait_status(daemon, "dmn-agent", "ready by exec cat", lambda e: e["ready"])
    run_id = current_run_id(agent)

    failing = {"readinessProbe": {"exec": {"command": ["false"]}, **FAST}}
    applied = daemon.cli("--connect", sandbox.uri, "apply", "dmn-agent", "-f",
                         _write_spec(tmp_path, failing))
    assert applied.returncode == 0, applied.stderr
    wait_status(daemon, "dmn-agent", "not ready by exec false", lambda e: not e["ready"],
                 timeout=20)
    assert current_run_id(agent) == run_id


def _events_since(daemon, domain: str, since: int) -> list[dict]:
    return list(daemon.client.events(domain=domain, since=since))


def test_save_and_restore_release_and_adopt_without_acting(daemon, guests):
    """`virsh save` stops the domain on purpose and `virsh restore` brings the same
    guest back: the daemon lets go ("stopped: saved"), takes it up again, and acts on
    nothing in between."""
    web = guests["web"]
    wait_status(daemon, "dmn-web", "ready", lambda e: e["ready"])
    since = max((event["seq"] for event in daemon.client.events()), default=0)
    image = paths.BUILD / "saves" / "dmn-web.save"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.unlink(missing_ok=True)
    try:
        web.dom.save(str(image))
        released = wait_until(
            lambda: [e for e in _events_since(daemon, "dmn-web", since)
                     if e["type"] == "Released"],
            timeout=30, what="the daemon to release the saved domain")
        assert released[0]["message"] == "no longer monitored: stopped: saved", released
        web.dom.connect().restore(str(image))
    finally:
        image.unlink(missing_ok=True)
    wait_status(daemon, "dmn-web", "ready after the restore", lambda e: e["ready"],
                timeout=60)
    types = [e["type"] for e in _events_since(daemon, "dmn-web", since)]
    assert "Adopted" in types, types
    assert not {"LivenessFailed", "LivenessAction", "ActionSkipped"} & set(types), types


def test_libvirtd_restart_keeps_monitoring(daemon, guests, restart_libvirtd):
    """libvirtd restarts under running domains: the daemon reconnects, re-adopts and keeps
    probing the same runs without acting on them."""
    web = guests["web"]
    wait_status(daemon, "dmn-web", "ready", lambda e: e["ready"])
    run_id = current_run_id(web)
    restarted_at = time.time()
    restart_libvirtd()
    wait_until(lambda: daemon.client.status()["libvirtConnected"], timeout=60,
               what="the daemon to reconnect to the restarted libvirtd", interval=0.3)
    wait_status(daemon, "dmn-web", "probed after the restart",
                 lambda e: e["probes"]["readiness"].get("lastResult", {}).get("time", 0)
                 > restarted_at + 1 and e["ready"], timeout=60)
    assert current_run_id(web) == run_id
    assert daemon.status("dmn-web")["live"]
    events = daemon.cli("events").stdout
    assert "LibvirtReconnected" in events or "LibvirtDisconnected" in events, events


def test_tcp_liveness_restarts_when_nothing_listens(daemon, guests):
    """KubeVirt's "TCP liveness": alive while a server runs; without one, restarted."""
    web = guests["web"]
    _restart_with_spec(web, {**BOOTED, "terminationGracePeriodSeconds": 0,
                             "livenessProbe": {"tcpSocket": {"port": TCP_PORT}, **FAST,
                                               "failureThreshold": 2}})
    wait_status(daemon, "dmn-web", "live by TCP after the startup probe",
                lambda e: e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success")
    _wait_in_native_lane(daemon, "dmn-web", "liveness")  # the failure starts in the lane
    _assert_restarted_within(daemon, web, lambda: web.kill_service("tcp", "KILL"),
                             bound=RESTART_BOUND)


def test_ping_liveness_restarts_when_the_agent_is_gone(daemon, guests):
    """KubeVirt's "ping liveness": stop qemu-ga and the VM is restarted (the paused
    case, which must not be, is test_ping_liveness_does_not_restart_a_user_paused_...)."""
    agent = guests["agent"]
    _restart_with_spec(agent, PAUSED_SPEC)
    wait_status(daemon, "dmn-agent", "live by guest-ping after the startup probe",
                lambda e: e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success")
    pid = agent.service_pid("qemu-ga")

    def kill_the_agent() -> None:
        # Started, not waited for: the agent that would report the kill's exit is gone.
        harness_agent.command(agent.dom, "guest-exec",
                              {"path": "kill", "arg": ["-KILL", str(pid)]})

    _assert_restarted_within(daemon, agent, kill_the_agent, bound=RESTART_BOUND)


def test_a_restart_whose_start_fails_is_tried_again_after_the_back_off(daemon, guests):
    """The liveness restart stops the guest, but its start fails (its initrd is gone
    from the definition): the daemon says so and tries again after the back-off, and
    the domain runs again once it can start."""
    web = guests["web"]
    _restart_with_spec(web, WEB_SPEC)  # HTTP liveness again (earlier tests changed it)
    wait_status(daemon, "dmn-web", "live by HTTP after the startup probe",
                lambda e: e["ready"] and e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success")
    conn = web.dom.connect()
    good = web.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    initrd = re.search(r"<initrd>([^<]+)</initrd>", good).group(1)
    conn.defineXML(good.replace(initrd, "/nonexistent/vmhealth-e2e-initrd.gz"))
    since = max((event["seq"] for event in daemon.client.events()), default=0)
    run_id = current_run_id(web)
    try:
        web.kill_service("httpd", "KILL")
        failed = wait_until(
            lambda: [e for e in _events_since(daemon, "dmn-web", since)
                     if e["type"] == "LivenessActionFailed"
                     and "start failed" in e["message"]],
            timeout=60, what="the restart's start to fail")
        assert "trying again after the back-off" in failed[0]["message"]
        assert not web.dom.isActive()
    finally:
        conn.defineXML(good)
    wait_until(lambda: web.dom.isActive() and current_run_id(web) != run_id, timeout=60,
               what="dmn-web started by the next attempt")
    # The action's event follows the start it reports.
    wait_until(lambda: "LivenessAction" in [e["type"] for e in
                                            _events_since(daemon, "dmn-web", since)],
               timeout=30, what="the restart to be reported done")
    types = [e["type"] for e in _events_since(daemon, "dmn-web", since)]
    assert types.index("LivenessActionFailed") < types.index("RestartBackOff", types.index(
        "LivenessActionFailed")) < types.index("LivenessAction"), types
    wait_status(daemon, "dmn-web", "ready again", lambda e: e["ready"])


def test_kubevirt_readiness_scenarios_uname_and_tcp_without_a_listener(daemon, guests,
                                                                       sandbox, tmp_path):
    """KubeVirt's functional probe tests (tests/network/probes.go): exec readiness with
    `uname -a` is ready; TCP readiness on a port nothing listens on never is. Applied
    in place to the running agent guest (no listener on TCP_PORT there)."""
    def apply(spec: dict) -> None:
        result = daemon.cli("--connect", sandbox.uri, "apply", "dmn-agent", "-f",
                            _write_spec(tmp_path, spec))
        assert result.returncode == 0, result.stderr

    guests["agent"].wait_for_agent(timeout=BOOT_TIMEOUT)
    apply({"readinessProbe": {"exec": {"command": ["uname", "-a"]}, **FAST}})
    entry = wait_status(daemon, "dmn-agent", "ready by exec uname -a",
                        lambda e: e["ready"] and "uname" in e["probes"]["readiness"]
                        .get("lastResult", {}).get("message", ""), timeout=30)
    assert "Linux" in entry["probes"]["readiness"]["lastResult"]["message"]
    apply({"readinessProbe": {"tcpSocket": {"port": TCP_PORT}, **FAST}})
    wait_status(daemon, "dmn-agent", "probed by TCP",
                lambda e: "tcp" in e["probes"]["readiness"].get("lastResult", {})
                .get("message", ""), timeout=30)
    assert not any(_ready_for(daemon, "dmn-agent", 4))
