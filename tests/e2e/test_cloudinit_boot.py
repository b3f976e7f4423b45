"""cloud-init bootstrap on a real first boot: a Debian 12 cloud image, the user data
`vmhealth cloudinit render` writes, and nothing else.

The image (tools/sandbox/cloud_image.py) has systemd, Debian's kernel, cloud-init and apt,
but neither qemu-guest-agent nor watchdog: the rendered user data installs them from
the local mirror the host serves on the sandbox bridge. The test does what a user does:
`vmhealth apply` the manifest, `vmhealth cloudinit seed DOM --distro debian --attach`,
start the domain. Everything after that is observed from the host: through the guest
agent (once the user data has installed it), libvirt's events and the vmhealth daemon.
Then vmhealth itself is installed in the guest, as docs/guest.md says for a Debian guest
(this tree's wheel, served by the mirror, with pip; the image carries its Debian
dependencies), and `vmhealth guest check` runs there.

The tests share one guest and run in order: first boot, the daemon's view, a clean
stop of the watchdog daemon, `vmhealth guest check` in the guest, the watchdog firing
when its daemon is killed (action poweroff), and a second boot of the same disk and
seed, checked again by `vmhealth guest check`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import libvirt
import pytest
import yaml

from tests.ci import missing
from tests.wheel import build_pure_wheel
from tools.sandbox import agent as harness_agent
from tools.sandbox import cloud_image, events
from tools.sandbox.daemon import DaemonProcess, wait_status
from tools.sandbox.guests import GuestFactory
from tools.sandbox.waiting import wait_until
from vmhealth import seediso
from vmhealth.excerpt import excerpt
from vmhealth.guest import edits
from vmhealth.guest.plan import KEEPALIVE_UNIT

pytestmark = pytest.mark.e2e

NAME = "ci-debian"
# First boot under TCG: systemd, three cloud-init stages, apt installing two packages.
FIRST_BOOT_TIMEOUT = 300
HEALTHY_FILE = "/var/lib/vmhealth/healthy.txt"
LIVENESS_PERIOD, LIVENESS_FAILURES = 10, 3
# What `vmhealth cloudinit render` derives from the liveness probe (plan.watchdog_settings).
WATCHDOG_TIMEOUT = LIVENESS_PERIOD * LIVENESS_FAILURES
WATCHDOG_STATE = "/sys/class/watchdog/watchdog0/state"  # active: armed (opened, no 'V')
# Where Debian's pip puts a root install's console scripts.
GUEST_VMHEALTH = "/usr/local/bin/vmhealth"
# What `vmhealth guest check` must report, all "ok", for this spec on Debian.
CHECKED_ITEMS = ("agent running", "agent channel", "guest-exec allowed", "watchdog device",
                 "watchdog daemon feeding", f"{KEEPALIVE_UNIT} masked")
MANIFEST = {
    "apiVersion": "kubevirt.io/v1",
    "kind": "VirtualMachineInstance",
    "metadata": {"name": NAME},
    "spec": {
        "domain": {"devices": {"watchdog": {"name": "watchdog",
                                            "i6300esb": {"action": "poweroff"}}}},
        # The agent only exists once cloud-init has installed it: liveness waits for it.
        "startupProbe": {"guestAgentPing": {}, "periodSeconds": 2,
                         "failureThreshold": FIRST_BOOT_TIMEOUT // 2},
        "readinessProbe": {"exec": {"command": ["cat", HEALTHY_FILE]},
                           "periodSeconds": 2, "timeoutSeconds": 5},
        "livenessProbe": {"guestAgentPing": {}, "periodSeconds": LIVENESS_PERIOD,
                          "failureThreshold": LIVENESS_FAILURES},
        "volumes": [{"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": (
            # The user's own user data, as in KubeVirt's guide: merged, not replaced.
            "#cloud-config\nruncmd:\n"
            "  - [mkdir, -p, /var/lib/vmhealth]\n"
            f"  - [touch, {HEALTHY_FILE}]\n")}}],
    },
}


def _tools_missing() -> str | None:
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/install-deps"
    return None


class Booted:
    """The guest and what the test measured on the way."""

    def __init__(self, guest, daemon: DaemonProcess, image: cloud_image.CloudImage,
                 requests: list[str], user_data: str, wheel: Path) -> None:
        self.guest = guest
        self.wheel = wheel
        self.daemon = daemon
        self.image = image
        self.requests = requests
        self.user_data = user_data
        self.times: dict[str, float] = {}

    def mark(self, what: str) -> float:
        elapsed = time.monotonic() - self.guest.started_at
        self.times[what] = round(elapsed, 1)
        print(f"\ncloud-init e2e: {what} {elapsed:.1f}s after start")
        return elapsed

    def run(self, *argv: str, timeout: float = 60) -> str:
        """A command in the guest (guest-exec); its stdout, or a failure with stderr."""
        result = self.guest.exec(*argv, timeout=timeout)
        assert result.exitcode == 0, f"{argv} in the guest: exit {result.exitcode}, " \
            f"{excerpt(result.stderr, 2000)}"
        return result.stdout


@pytest.fixture(scope="module")
def image(sandbox):
    reason = _tools_missing()
    if reason:
        missing(reason)
    built = cloud_image.cached()
    if built is None:
        missing("the Debian cloud image is not built: tests/e2e/run builds it before "
                "entering the sandbox (network to deb.debian.org, ~2 min; log: "
                f"{cloud_image.paths.IMAGES / cloud_image.FAILED_LOG}), or run "
                "`python -m tools.sandbox.cloud_image`")
    print(f"\ncloud-init e2e: image {built.directory}")
    return built


@pytest.fixture(scope="module")
def booted(sandbox, image, recorder):
    workdir = sandbox.log_dir / "cloudinit"
    workdir.mkdir(exist_ok=True)
    wheel = build_pure_wheel(workdir / "wheel")
    daemon = DaemonProcess(workdir, sandbox.uri)
    daemon.start()
    factory = GuestFactory(sandbox, events.connect(sandbox.uri), image.boot)
    disk = cloud_image.overlay(image, workdir / "disk.qcow2")
    spec = factory.spec(NAME, disk=str(disk), watchdog_action=None, memory_mib=1024,
                        healthy_file=False,
                        extra_cmdline=("root=/dev/vda", "rw", "net.ifnames=0"))
    guest = factory.define(spec)
    try:
        manifest = workdir / "manifest.yaml"
        manifest.write_text(yaml.safe_dump(MANIFEST, sort_keys=False))
        network = workdir / "network-config"
        network.write_text(yaml.safe_dump({"version": 1, "config": [{
            "type": "physical", "name": "eth0", "mac_address": spec.mac,
            "subnets": [{"type": "static",
                         "address": f"{spec.ipv4}/{spec.prefix4}"}]}]}))
        applied = daemon.cli("--connect", sandbox.uri, "apply", NAME, "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        seed = workdir / "seed.iso"
        seeded = daemon.cli("--connect", sandbox.uri, "cloudinit", "seed", NAME, "-o",
                            str(seed), "--distro", "debian", "--network-config",
                            str(network), "--attach")
        assert seeded.returncode == 0, seeded.stderr
        _label, files = seediso.read_iso(seed)
        with cloud_image.serve_mirror(image, extra=(wheel,)) as requests:
            state = Booted(guest, daemon, image, requests, files["user-data"], wheel)
            guest.start()
            yield state
        (workdir / "times.json").write_text(json.dumps(state.times, indent=1) + "\n")
    finally:
        factory.cleanup()
        daemon.stop()
        print(f"cloud-init e2e: logs in {workdir}, console {guest.console_log}")


def _cloud_init_status(booted: Booted) -> dict | None:
    """`cloud-init status --format json` once cloud-init has finished (else None)."""
    result = booted.guest.exec("cloud-init", "status", "--format", "json", timeout=60)
    status = json.loads(result.stdout)
    return status if status.get("status") in ("done", "error") else None


def _wait_cloud_init(booted: Booted, timeout: float) -> dict:
    booted.guest.wait_for_agent(timeout=timeout)
    return wait_until(lambda: _cloud_init_status(booted), timeout=timeout, interval=2,
                      what="cloud-init to finish in the guest")


def _feeder(booted: Booted) -> int:
    """The watchdog daemon's pid, from systemd (0: not running)."""
    text = booted.run("systemctl", "show", "--property=MainPID", "--value",
                      "watchdog.service")
    return int(text.strip() or 0)


def _unit_state(booted: Booted, unit: str) -> dict[str, str]:
    """LoadState, ActiveState and Result of a unit in the guest, from systemd."""
    text = booted.run("systemctl", "show", "--property=LoadState,ActiveState,Result", unit)
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _per_instance_markers(booted: Booted) -> dict[str, str]:
    """cloud-init's per-instance semaphores with their modification times."""
    listing = booted.run("sh", "-c", 'stat -c "%n %Y" /var/lib/cloud/instance/sem/*')
    return dict(line.rsplit(" ", 1) for line in listing.splitlines())


def _guest_check(booted: Booted) -> dict[str, str]:
    """`vmhealth guest check --spec -` in the guest, the manifest on its standard input;
    {item: "ok" | "MISSING" | "unknown"}. Fails the test unless it exits 0."""
    manifest = yaml.safe_dump(MANIFEST, sort_keys=False).encode()
    result = booted.guest.exec(GUEST_VMHEALTH, "guest", "check", "--spec", "-",
                               stdin=manifest, timeout=120)
    print("\ncloud-init e2e: vmhealth guest check in the guest:\n" + "\n".join(
        excerpt(line, 200) for line in result.stdout.splitlines()[:20]))
    assert result.exitcode == 0, f"vmhealth guest check: exit {result.exitcode}\n" \
        f"{excerpt(result.stdout, 2000)}\n{excerpt(result.stderr, 2000)}"
    items = {}
    for line in result.stdout.splitlines():
        word, _, rest = line.partition(" ")
        items[rest.strip().split(": ", 1)[0]] = word
    return items


def test_first_boot_runs_the_rendered_user_data(booted):
    status = _wait_cloud_init(booted, FIRST_BOOT_TIMEOUT)
    booted.mark("cloud-init finished")
    assert status["status"] == "done" and status["errors"] == [], excerpt(status, 4000)
    # The packages came from the host's mirror on the bridge, nowhere else.
    fetched = [line for line in booted.requests if ".deb " in line]
    assert any("qemu-guest-agent_" in line for line in fetched), booted.requests
    assert any("watchdog_" in line for line in fetched), booted.requests
    sources = booted.run("sh", "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/* "
                         "2>/dev/null; true")
    assert sources.strip() == cloud_image.SOURCES_LIST.strip(), excerpt(sources)
    # The seed's user data is the product's rendering, and cloud-init ran it.
    assert "packages: [qemu-guest-agent, watchdog]" in booted.user_data
    output = booted.run("cat", "/var/log/cloud-init-output.log")
    assert "vmhealth: /etc/watchdog.conf: set watchdog-device" in output, \
        excerpt(output[-3000:], 3000)
    # qemu-ga answers and lets guest-exec through (we have been using it).
    info = harness_agent.command(booted.guest.dom, "guest-info")
    enabled = {c["name"]: c["enabled"] for c in info["supported_commands"]}
    assert enabled.get("guest-exec") and enabled.get("guest-exec-status"), excerpt(enabled)
    # The watchdog daemon runs and holds the i6300esb device open.
    assert booted.run("systemctl", "is-active", "watchdog.service").strip() == "active"
    identity = booted.run("cat", "/sys/class/watchdog/watchdog0/identity").strip()
    assert identity == "i6300ESB timer", excerpt(identity)
    assert booted.run("cat", "/sys/class/watchdog/watchdog0/timeout").strip() == \
        str(WATCHDOG_TIMEOUT)
    pid = _feeder(booted)
    fds = booted.run("sh", "-c", 'ls -l /proc/"$1"/fd', "sh", str(pid))
    assert "/dev/watchdog" in fds, excerpt(fds, 1000)
    # Debian's watchdog daemon loads the driver named in /etc/default/watchdog (not
    # something `vmhealth guest check` looks at): nothing left to edit there.
    default = booted.run("cat", "/etc/default/watchdog")
    assert edits.edit_debian_default(default, "i6300esb")[1] == [], excerpt(default)


def test_daemon_adopts_and_reports_ready_and_live(booted):
    def last_readiness(entry: dict) -> str | None:
        """The exec probe's latest outcome; `skipped` (the agent was busy with another
        call, not counted) can be the latest one while the domain is ready."""
        return (entry["probes"].get("readiness", {}).get("lastResult") or {}).get("outcome")
    entry = wait_status(booted.daemon, NAME, "ready and live",
                        lambda e: e["ready"] and e["live"] and e["state"] == "running"
                        and last_readiness(e) == "success",
                        timeout=FIRST_BOOT_TIMEOUT)
    booted.mark("vmhealth ready and live")
    assert entry["probes"]["readiness"]["healthy"] is True, entry
    types = [e["type"] for e in booted.daemon.client.events(domain=NAME)]
    assert "Adopted" in types, types


def test_clean_stop_disarms_the_watchdog(booted):
    """A clean stop disarms the device (the daemon writes the magic 'V' before closing)
    and leaves the unit inactive (run_wd_keepalive=0): no action can follow."""
    _wait_cloud_init(booted, FIRST_BOOT_TIMEOUT)
    assert booted.run("cat", WATCHDOG_STATE).strip() == "active"
    booted.run("systemctl", "stop", "watchdog.service")
    assert booted.run("cat", WATCHDOG_STATE).strip() == "inactive"
    assert _unit_state(booted, "watchdog.service")["ActiveState"] == "inactive"
    assert _unit_state(booted, KEEPALIVE_UNIT)["ActiveState"] == "inactive"
    booted.run("systemctl", "start", "watchdog.service")
    assert booted.run("cat", WATCHDOG_STATE).strip() == "active"


def test_vmhealth_guest_check_passes_in_the_guest(booted):
    """vmhealth installed in the guest as docs/guest.md says for Debian (the wheel with
    pip, over the Debian packages of its dependencies, which the image carries), then
    `vmhealth guest check` for the manifest finds nothing missing."""
    _wait_cloud_init(booted, FIRST_BOOT_TIMEOUT)
    assert booted.guest.exec("test", "-e", GUEST_VMHEALTH).exitcode == 1, \
        "vmhealth is in the image already"
    started = time.monotonic()
    booted.run("python3", "-m", "pip", "install", "--break-system-packages", "--no-deps",
               "--no-index", "--disable-pip-version-check", "--root-user-action=ignore",
               cloud_image.mirror_url(booted.wheel.name), timeout=180)
    booted.times["vmhealth installed in the guest"] = round(time.monotonic() - started, 1)
    assert any(booted.wheel.name in line for line in booted.requests), booted.requests
    version = booted.run(GUEST_VMHEALTH, "--version")
    assert booted.wheel.name.split("-")[1] in version, excerpt(version)
    items = _guest_check(booted)
    assert {name: items.get(name) for name in CHECKED_ITEMS} == \
        dict.fromkeys(CHECKED_ITEMS, "ok"), items
    # Nothing the check could not decide: a live guest, every question answered.
    assert set(items.values()) == {"ok"}, items


def test_watchdog_fires_when_the_daemon_is_killed(booted, recorder):
    """The i6300esb fires once its daemon dies: the daemon's feeds kept the guest up for
    longer than the timeout, then SIGKILL (no magic close) lets libvirt power it off.

    Debian's watchdog.service has OnFailure=wd_keepalive.service, which would feed the
    device on for a killed daemon; the rendered user data masks wd_keepalive, so the
    unit fails and nothing takes over."""
    _wait_cloud_init(booted, FIRST_BOOT_TIMEOUT)
    # The stock hand-over is still declared; only the mask makes it go nowhere.
    on_failure = booted.run("systemctl", "show", "--property=OnFailure", "--value",
                            "watchdog.service")
    assert KEEPALIVE_UNIT in on_failure.split(), excerpt(on_failure)
    assert _unit_state(booted, KEEPALIVE_UNIT)["LoadState"] == "masked"
    assert booted.run("cat", WATCHDOG_STATE).strip() == "active"
    pid = _feeder(booted)
    # Fed for longer than one timeout (the daemon was restarted by the clean-stop test;
    # the guest check ran meanwhile): the feeds, not luck, keep the guest running.
    wait_until(lambda: int(booted.run("ps", "-o", "etimes=", "-p", str(pid)))
               > WATCHDOG_TIMEOUT, timeout=WATCHDOG_TIMEOUT + 30, interval=2,
               what="the watchdog daemon to have run longer than its timeout")
    booted.first_boot = {"markers": _per_instance_markers(booted),
                         "instance": booted.run("cat", "/var/lib/cloud/data/instance-id")}
    booted.run("kill", "-KILL", str(pid))
    killed = time.monotonic()

    def unit_failed() -> dict[str, str] | None:
        state = _unit_state(booted, "watchdog.service")
        return state if state["ActiveState"] == "failed" else None
    # systemd sees the crash: the unit fails (a clean stop would leave it inactive) ...
    failed = wait_until(unit_failed, timeout=WATCHDOG_TIMEOUT / 2, interval=1,
                        what="watchdog.service to fail after its daemon was killed")
    assert failed["Result"] == "signal", failed
    # ... and nothing took the device over: wd_keepalive neither started nor runs.
    keepalive = _unit_state(booted, KEEPALIVE_UNIT)
    assert keepalive["ActiveState"] == "inactive", keepalive
    running = booted.guest.exec("pgrep", "-x", "wd_keepalive")
    assert running.exitcode == 1, f"wd_keepalive runs: {excerpt(running.stdout)}"
    assert booted.run("cat", WATCHDOG_STATE).strip() == "active"  # armed, and unfed
    recorder.wait_for(NAME, "watchdog", libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF,
                      timeout=WATCHDOG_TIMEOUT + 30)
    fired = time.monotonic() - killed
    booted.times["daemon killed to watchdog poweroff"] = round(fired, 1)
    print(f"\ncloud-init e2e: watchdog poweroff {fired:.1f}s after the daemon was killed")
    assert fired > WATCHDOG_TIMEOUT - 12, "the watchdog fired before its timeout"

    def shown() -> bool:
        text = booted.daemon.cli("events", "--domain", NAME).stdout
        return "Watchdog" in text and "poweroff" in text
    wait_until(shown, timeout=30, what="the Watchdog event in `vmhealth events`")
    booted.guest.wait_for_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=30)


def test_second_boot_changes_nothing(booted):
    first = getattr(booted, "first_boot", None)
    if first is None:
        pytest.fail("the watchdog test did not power the guest off (see above)")
    booted.guest.start()  # the same disk and seed: the same instance
    status = _wait_cloud_init(booted, FIRST_BOOT_TIMEOUT)
    booted.mark("second boot: cloud-init finished")
    assert status["status"] == "done" and status["errors"] == [], excerpt(status, 4000)
    assert booted.run("cat", "/var/lib/cloud/data/instance-id") == first["instance"]
    # No per-instance module ran again: every semaphore is as the first boot left it.
    assert _per_instance_markers(booted) == first["markers"]
    # The user data's commands (and the package install) ran once, in the first boot.
    output = booted.run("cat", "/var/log/cloud-init-output.log")
    assert output.count("vmhealth: /etc/watchdog.conf: set watchdog-device") == 1
    # The guest came back as configured: agent, watchdog daemon, and nothing missing.
    wait_until(lambda: _feeder(booted), timeout=60, what="the watchdog daemon to start")
    items = _guest_check(booted)
    assert set(items.values()) == {"ok"} and set(CHECKED_ITEMS) <= set(items), items
    wait_status(booted.daemon, NAME, "ready again in the second boot",
                lambda e: e["ready"] and e["live"], timeout=FIRST_BOOT_TIMEOUT)
    booted.mark("second boot: vmhealth ready")


def test_image_cache_key_names_the_package_versions(image):
    key_text = (image.directory / "key.txt").read_text()
    for package in (*cloud_image.IMAGE_PACKAGES, *cloud_image.MIRROR_PACKAGES,
                    *cloud_image.WHEEL_PACKAGES):
        assert f"\n{package}=" in "\n" + key_text, key_text
    assert not (Path(image.directory) / "root").exists()
