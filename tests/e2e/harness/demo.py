"""The demo: a guest with the seed's watchdog and probes, step by step, in the sandbox.

    python -m tests.e2e.harness.demo        (scripts/demo installs what is needed first)

It reuses the e2e harness: same namespaces, libvirtd sandbox, guest image and events.
Until the vmhealth daemon exists, the demo runs the seed's probes (HTTP and TCP on
port 1500, exec `cat /tmp/healthy.txt`, guest-agent ping) itself, then kills the
watchdog feeder in the guest and shows libvirt's watchdog event and the power-off.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import libvirt

from . import events, guest_image, namespace, paths
from .guests import GuestFactory
from .sandbox import Sandbox

MODULE = "tests.e2e.harness.demo"
DOMAIN = "demo-web"
PORT = 1500  # the seed's httpGet/tcpSocket probe port
MANIFEST = paths.REPO / "tests" / "data" / "manifests" / "vmi-with-watchdog.yaml"
STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}
SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
}

_t0 = time.monotonic()


def step(text: str) -> None:
    print(f"\n[{time.monotonic() - _t0:6.1f}s] == {text}", flush=True)


def info(text: str) -> None:
    print(f"           {text}", flush=True)


def _vmhealth(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("vmhealth")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _show(result: subprocess.CompletedProcess) -> None:
    for line in (result.stdout + result.stderr).splitlines():
        info(f"| {line}")


def _probe_http(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:{PORT}/", timeout=5) as response:  # noqa: S310
        return f"HTTP {response.status}"


def _probe_tcp(ip: str) -> str:
    with socket.create_connection((ip, PORT), timeout=5):
        return "connected"


def run_demo(sandbox: Sandbox) -> int:
    step("building (or reusing) the guest image: Debian kernel + busybox + qemu-ga")
    image = guest_image.build()
    info(f"kernel {image.kernel}")
    info(f"initrd {image.initrd}")

    step("starting a private libvirtd (own mount, network and pid namespaces)")
    sandbox.start()
    info(f"libvirtd on {sandbox.uri}; bridge {sandbox.bridge.name} "
         f"{sandbox.bridge.ipv4}/{sandbox.bridge.prefix4}; logs in {sandbox.log_dir}")
    conn = events.connect(sandbox.uri)
    recorder = events.EventRecorder(conn)
    factory = GuestFactory(sandbox, conn, image)

    step(f"defining {DOMAIN} (TCG, no watchdog yet) and applying the seed's manifest")
    guest = factory.create(DOMAIN, start=False, http_port=PORT, watchdog_feeder=True,
                           watchdog_action=None)
    info(f"$ vmhealth apply {DOMAIN} -f {MANIFEST.relative_to(paths.REPO)}")
    applied = _vmhealth("--connect", sandbox.uri, "apply", DOMAIN, "-f", str(MANIFEST))
    _show(applied)
    if applied.returncode != 0:
        info("vmhealth apply failed; the demo stops here")
        return 1
    xml = guest.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for line in xml.splitlines():
        if "<watchdog" in line:
            info(f"domain XML now has: {line.strip()}")

    step(f"starting {DOMAIN}; the guest's init starts httpd on {PORT}, the busybox "
         "watchdog feeder and qemu-ga")
    guest.start()
    seconds = guest.wait_for_agent(timeout=120)
    info(f"guest-ping answered {seconds:.1f}s after start")

    step("the seed's probes, run from the host (the vmhealth daemon will do this)")
    ip = guest.spec.ipv4
    guest.wait_for_port(PORT, timeout=60)
    info(f"liveness httpGet  {ip}:{PORT}  -> {_probe_http(ip)}")
    info(f"liveness tcpSocket {ip}:{PORT} -> {_probe_tcp(ip)}")
    result = guest.exec("cat", "/tmp/healthy.txt")
    info(f"readiness exec cat /tmp/healthy.txt -> exit {result.exitcode}")
    info(f"guestAgentPing -> {'ok' if guest.ping() else 'failed'}")

    step("killing the watchdog feeder in the guest (kill -9, via guest-exec)")
    pid = guest.service_pid("watchdog")
    guest.kill_service("watchdog", "KILL")
    killed_at = time.monotonic()
    info(f"busybox watchdog (guest pid {pid}) killed; the i6300esb fires ~4 s after "
         "its last feed")

    step("waiting for libvirt's watchdog event")
    event = recorder.wait_for(DOMAIN, "watchdog", timeout=60)
    info(f"VIR_DOMAIN_EVENT_ID_WATCHDOG: action={events.watchdog_action_name(event.code)} "
         f"{time.monotonic() - killed_at:.1f}s after the kill")
    reason = guest.wait_for_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=30)
    info(f"{DOMAIN} is {STATE_NAMES[libvirt.VIR_DOMAIN_SHUTOFF]} "
         f"({SHUTOFF_REASONS.get(reason, reason)})")

    step("last lines of the guest console")
    for line in guest.console(tail=8).splitlines():
        info(f"| {line}")
    recorder.close()
    factory.cleanup()
    return 0


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
            return run_demo(sandbox)
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
