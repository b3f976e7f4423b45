"""The demo: vmhealth as installed, against a real libvirtd and a real guest, step by step.

    python -m tools.demo [--smoke]        (scripts/demo installs what is needed first)

In a private libvirtd sandbox (tools/sandbox: own mount, network and pid namespaces)
it runs what an administrator would: `vmhealth hook install`, `vmhealth daemon`,
`vmhealth apply` of a KubeVirt manifest made of the seed's examples (readiness and
liveness httpGet on port 1500, an i6300esb watchdog), `virsh start`; then it breaks
the guest twice and shows, with the elapsed times of this run, what vmhealth does:
readiness turns NotReady and the liveness probe restarts the guest; the watchdog
fires when its feeder dies.  Without --smoke everything stays up until Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt

from tools.sandbox import events, guest_image, namespace, paths
from tools.sandbox.daemon import DaemonProcess, current_run_id, vmhealth_cli, wait_status
from tools.sandbox.guests import Guest, GuestFactory
from tools.sandbox.sandbox import Sandbox
from tools.sandbox.waiting import wait_until
from vmhealth.monitor.config import DaemonConfig

MODULE = "tools.demo"
DOMAIN = "demo-web"
PORT = 1500  # the seed's httpGet probe port
MANIFEST = Path(__file__).with_name("demo-web.yaml")
BOOT_TIMEOUT = 120
# Each step's heading and a regular expression for the line that shows the step
# happened; the smoke test (tests/e2e/test_demo.py) checks both, in this order.
STEPS = (
    ("building (or reusing) the guest image", r"kernel /boot/vmlinuz-"),
    ("starting a private libvirtd", r"guest kernel \S+"),
    ("vmhealth hook install", r"/etc/libvirt/hooks/qemu\.d/vmhealth: installed"),
    ("vmhealth daemon", r"\| answering on \S+api\.sock"),
    ("vmhealth apply", r"domain XML now has: <watchdog model='i6300esb' action='poweroff'"),
    ("virsh start", rf"Domain '{DOMAIN}' started"),
    ("the daemon adopts", r"adopted [\d.]+s after virsh start"),
    ("makes it ready", r"ready [\d.]+s after virsh start"),
    ("killing the guest's web server", r"busybox httpd \(guest pid \d+\) killed"),
    ("NotReady", r"NotReady [\d.]+s after the kill"),
    ("liveness restart", r"liveness restart [\d.]+s after the kill"),
    ("ready again", r"ready again [\d.]+s after the kill"),
    ("killing the watchdog feeder", r"busybox watchdog \(guest pid \d+\) killed"),
    ("the watchdog event", r"watchdog event [\d.]+s after the kill"),
)

_t0 = time.monotonic()


def step(number: int, text: str) -> None:
    print(f"\n[{time.monotonic() - _t0:6.1f}s] == {number:2d}. {text}", flush=True)


def info(text: str) -> None:
    print(f"           {text}", flush=True)


def show(argv: list[str], result: subprocess.CompletedProcess) -> None:
    info("$ " + " ".join(argv))
    for line in (result.stdout + result.stderr).splitlines():
        if line.strip():
            info(f"| {line}")


def run_shown(argv: list[str], shown: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run argv, print it (as `shown`: the command a user would type) and its output."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    show(shown or argv, result)
    if result.returncode != 0:
        raise DemoFailed(f"{' '.join(shown or argv)} exited {result.returncode}")
    return result


class DemoFailed(Exception):
    pass


def _events_of(daemon: DaemonProcess, type_: str) -> list[dict]:
    return [e for e in daemon.client.events(domain=DOMAIN) if e.get("type") == type_]


def _show_cli(daemon: DaemonProcess, *args: str) -> None:
    show(["vmhealth", *args], daemon.cli(*args))


def set_up(sandbox: Sandbox) -> tuple[GuestFactory, DaemonProcess]:
    step(1, "building (or reusing) the guest image: Debian kernel + busybox + qemu-ga")
    image = guest_image.build()
    info(f"kernel {image.kernel}; initrd {image.initrd}")

    step(2, "starting a private libvirtd (own mount, network and pid namespaces)")
    sandbox.start()
    factory = GuestFactory(sandbox, events.connect(sandbox.uri), image)
    info(f"libvirtd on {sandbox.uri}; bridge {sandbox.bridge.name} "
         f"{sandbox.bridge.ipv4}/{sandbox.bridge.prefix4}; logs in {sandbox.log_dir}")
    for line in factory.components():
        info(line)

    step(3, "vmhealth hook install: libvirt hands each domain it starts to vmhealth")
    run_shown([*vmhealth_cli(), "hook", "install"], ["vmhealth", "hook", "install"])

    step(4, "vmhealth daemon: the monitor (systemd runs it as vmhealth.service)")
    workdir = sandbox.log_dir / "vmhealth"
    workdir.mkdir()
    # The spool the installed hook writes to: the daemon learns of domains as on a host.
    daemon = DaemonProcess(workdir, sandbox.uri, spool_dir=Path(DaemonConfig().spool_dir))
    daemon.start()
    info(f"$ vmhealth daemon --config {daemon.config}")
    info(f"| answering on {daemon.socket}; log {daemon.log}")
    return factory, daemon


def boot(factory: GuestFactory, daemon: DaemonProcess) -> Guest:
    step(5, f"vmhealth apply: {DOMAIN} (defined without a watchdog) gets the manifest's "
            "probes and watchdog")
    guest = factory.create(DOMAIN, start=False, http_port=PORT, watchdog_feeder=True,
                           watchdog_action=None)
    uri = factory.sandbox.uri
    relative = MANIFEST.relative_to(paths.REPO)
    run_shown([*vmhealth_cli(), "--connect", uri, "apply", DOMAIN, "-f", str(MANIFEST)],
              ["vmhealth", "apply", DOMAIN, "-f", str(relative)])
    for line in guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).splitlines():
        if "<watchdog" in line:
            info(f"domain XML now has: {line.strip()}")

    step(6, f"virsh start {DOMAIN}: its init starts httpd on {PORT}, the busybox "
            "watchdog feeder and qemu-ga")
    guest.started_at = time.monotonic()
    run_shown(["virsh", "-c", uri, "start", DOMAIN], ["virsh", "start", DOMAIN])

    step(7, "the daemon adopts the domain (from libvirt's lifecycle event and the hook)")
    wait_status(daemon, DOMAIN, "adopted", lambda e: e["state"] == "running", timeout=30)
    info(f"adopted {time.monotonic() - guest.started_at:.1f}s after virsh start")
    for event in _events_of(daemon, "Adopted"):
        info(f"event Adopted: {event.get('message')}")

    step(8, "vmhealth status: the readiness probe (httpGet :1500) makes it ready")
    wait_status(daemon, DOMAIN, "ready", lambda e: e["ready"], timeout=BOOT_TIMEOUT)
    info(f"ready {time.monotonic() - guest.started_at:.1f}s after virsh start")
    _show_cli(daemon, "status")
    return guest


def break_web_server(guest: Guest, daemon: DaemonProcess) -> None:
    step(9, "killing the guest's web server (kill -9 httpd, via guest-exec)")
    first_run = current_run_id(guest)
    pid = guest.service_pid("httpd")
    guest.kill_service("httpd", "KILL")
    killed_at = time.monotonic()
    info(f"busybox httpd (guest pid {pid}) killed")

    step(10, "readiness fails at once: vmhealth status says NotReady")
    wait_status(daemon, DOMAIN, "not ready", lambda e: not e["ready"], timeout=30)
    info(f"NotReady {time.monotonic() - killed_at:.1f}s after the kill")
    _show_cli(daemon, "status")

    step(11, "liveness restart: 3 failed httpGet probes, 2 s apart (after the 20 s "
             "initial delay), and the daemon restarts the guest")
    wait_until(lambda: _events_of(daemon, "LivenessAction"), timeout=90,
               what="the liveness restart", interval=0.3)
    info(f"liveness restart {time.monotonic() - killed_at:.1f}s after the kill")
    for event in _events_of(daemon, "LivenessAction"):
        info(f"event LivenessAction: {event.get('message')}")

    step(12, "ready again: the new boot's httpd answers the readiness probe")
    wait_status(daemon, DOMAIN, "ready again",
                lambda e: e["ready"] and current_run_id(guest) != first_run,
                timeout=BOOT_TIMEOUT)
    info(f"ready again {time.monotonic() - killed_at:.1f}s after the kill")
    _show_cli(daemon, "status")


def break_watchdog_feeder(guest: Guest, daemon: DaemonProcess) -> None:
    step(13, "killing the watchdog feeder in the guest (kill -9 watchdog, via guest-exec)")
    guest.wait_for_agent(timeout=BOOT_TIMEOUT)
    pid = guest.service_pid("watchdog")
    guest.kill_service("watchdog", "KILL")
    killed_at = time.monotonic()
    info(f"busybox watchdog (guest pid {pid}) killed; the i6300esb fires ~4 s after "
         "its last feed")

    step(14, "the watchdog event in vmhealth events (action poweroff: the guest is off)")
    wait_until(lambda: _events_of(daemon, "Watchdog"), timeout=60,
               what="the Watchdog event", interval=0.3)
    info(f"watchdog event {time.monotonic() - killed_at:.1f}s after the kill")
    _show_cli(daemon, "events", "--domain", DOMAIN)
    guest.wait_for_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=30)
    info(f"{DOMAIN} is shut off: the watchdog's action, and a VMI is never started again")


def run_demo(sandbox: Sandbox, smoke: bool) -> int:
    factory, daemon = set_up(sandbox)
    try:
        guest = boot(factory, daemon)
        break_web_server(guest, daemon)
        break_watchdog_feeder(guest, daemon)
        print(f"\n[{time.monotonic() - _t0:6.1f}s] demo complete", flush=True)
        if not smoke:
            info("the sandbox stays up with the daemon running; Ctrl-C ends the demo")
            threading.Event().wait()
        return 0
    except DemoFailed as failure:
        info(f"{failure}; the demo stops here")
        return 1
    finally:
        daemon.stop()
        factory.cleanup()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inside"]:
        # pid 1 of the namespace: run the demo as its child, reap, exit (which kills
        # anything left in the namespace).
        return namespace.run_as_init(
            [sys.executable, "-m", MODULE, "--in-sandbox", *argv[1:]], cwd=str(paths.REPO))
    if argv[:1] == ["--in-sandbox"]:
        log_dir = paths.new_log_dir("demo")
        sandbox = Sandbox(log_dir)
        try:
            return run_demo(sandbox, smoke="--smoke" in argv)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", flush=True)
            return 130
        finally:
            sandbox.stop()
            print(f"\nsandbox stopped; logs kept in {log_dir}", flush=True)
            changed = sandbox.host_changes() if namespace.inside() else []
            print("host's /etc/libvirt, /etc/passwd, /etc/group: "
                  + (f"CHANGED {changed}" if changed else "unchanged"), flush=True)
    namespace.reexec(MODULE, argv)
    return 127  # not reached
