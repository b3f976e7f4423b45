"""Live migration between two real libvirtds (the sandbox and its peer host), each with
its own vmhealth daemon, and the vmhealth hook installed on the destination by
`vmhealth hook install`.

One guest with an HTTP liveness probe is migrated slowly (a bandwidth cap), and its
HTTP server is killed while the migration runs.  What must hold:
- the source daemon counts no failure while the domain migrates out (KubeVirt: no
  probe failure counts during a migration) and so restarts nothing;
- the destination's hook aligns the watchdog action with the spec, although the
  migration asked for another one (the destination XML says action='none');
- the destination daemon adopts the arrived domain, from libvirt's events and the
  hook's spool file, and its liveness probe then restarts it (the server is dead).
"""

from __future__ import annotations

import subprocess
import time

import libvirt
import pytest

from tests.e2e.harness.peer import PEER_DIR, PeerHost
from tools.sandbox.daemon import (
    BOOT_TIMEOUT,
    DaemonProcess,
    current_run_id,
    define_with_spec,
    wait_status,
)
from tools.sandbox.domain_xml import watchdog_actions
from tools.sandbox.waiting import wait_until
from vmhealth.xmlsafe import parse_xml, to_string

pytestmark = pytest.mark.e2e

HTTP_PORT = 1600
NAME = "mig-web"
FAST = {"periodSeconds": 1, "timeoutSeconds": 1}
SPEC = {
    "startupProbe": {"guestAgentPing": {}, **FAST, "failureThreshold": BOOT_TIMEOUT},
    "livenessProbe": {"httpGet": {"port": HTTP_PORT, "path": "/"}, **FAST,
                      "failureThreshold": 2},
    "terminationGracePeriodSeconds": 0,
    "watchdog": {"model": "i6300esb", "action": "reset"},
}
# Slow enough that the migration outlasts the failure window below; raised afterwards.
SLOW_MIB_S = 1
FAILURE_WINDOW = 6  # seconds: 3x periodSeconds x failureThreshold


def _destination_xml(dom: libvirt.virDomain) -> str:
    """The domain's migratable XML with the watchdog action changed to 'none': what an
    operator might pass with `virsh migrate --xml`; the hook must undo it."""
    flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    root = parse_xml(dom.XMLDesc(flags))
    for watchdog in root.findall("devices/watchdog"):
        watchdog.set("action", "none")
    return to_string(root)


def _event_types(daemon: DaemonProcess, domain: str) -> list[str]:
    return [event["type"] for event in daemon.client.events(domain=domain)]


def _watch_source(daemon: DaemonProcess, killed_at: float, seconds: float) -> list[dict]:
    """The source's status every 0.3 s for `seconds`: every entry must say migrating,
    live, and no failure of the liveness probe counted after the server died."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entry = daemon.status(NAME)
        samples.append(entry)
        last = entry["probes"]["liveness"].get("lastResult", {})
        assert entry["suppressed"] == "migrating out", entry
        assert entry["live"], entry
        if last.get("time", 0) > killed_at and last["outcome"] != "success":
            assert not last["counted"], entry
        time.sleep(0.3)
    return samples


class SlowMigration:
    """`virsh migrate` in the background, capped at SLOW_MIB_S so the test can act while
    the domain migrates out; finish() lifts the cap and waits for success.  Leaving the
    block any other way aborts the migration, and a failure says how virsh ended."""

    def __init__(self, source_uri: str, peer_uri: str, guest, address: str,
                 xml_file) -> None:
        self.guest = guest
        self.argv = [
            "virsh", "-c", source_uri, "migrate", "--live", "--persistent",
            "--undefinesource", "--xml", str(xml_file), "--bandwidth", str(SLOW_MIB_S),
            # The peer shares the sandbox's network namespace: the bridge address is
            # reachable from both QEMUs (the host name would resolve to loopback).
            "--migrateuri", f"tcp://{address}", "--listen-address", address,
            guest.name, peer_uri]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SlowMigration:
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def running(self) -> bool:
        assert self.process is not None
        return self.process.poll() is None

    def finish(self, timeout: float = 180) -> None:
        assert self.process is not None
        self.guest.dom.migrateSetMaxSpeed(10_000)  # MiB/s: no cap to speak of
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"virsh migrate failed: {out}\n{err}"

    def __exit__(self, exc_type, exc, _tb) -> None:
        assert self.process is not None
        if not self.running():
            if exc is not None and self.process.returncode != 0:
                out, err = self.process.communicate()
                exc.add_note(f"virsh migrate ended early ({self.process.returncode}): "
                             f"{out.strip()} {err.strip()}")
            return
        try:
            self.guest.dom.abortJob()
        except libvirt.libvirtError:
            pass  # finished or failed meanwhile
        self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture(scope="module")
def peer(sandbox):
    host = PeerHost(sandbox.log_dir / "peer", sandbox.log_dir / "console")
    try:
        host.start()
        yield host
    finally:
        host.stop()


@pytest.fixture(scope="module")
def daemons(sandbox, peer):
    """(source, destination): the destination's runs in the peer's mount namespace, so
    it watches the spool directory the peer's hook writes."""
    def in_peer_namespace() -> list[str]:
        pid = (PEER_DIR / "libvirtd.pid").read_text().strip()
        return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--"]

    made = []
    for name, uri, spool, launcher in (
        ("source", sandbox.uri, None, list),
        ("destination", peer.uri, "/run/vmhealth/domains", in_peer_namespace),
    ):
        workdir = sandbox.log_dir / f"migration-daemon-{name}"
        workdir.mkdir(exist_ok=True)
        daemon = DaemonProcess(workdir, uri, spool_dir=spool, launcher=launcher)
        daemon.start()
        made.append(daemon)
    yield tuple(made)
    for daemon in made:
        daemon.stop()
        print(f"daemon log: {daemon.log}")


def test_migration_counts_no_failure_at_the_source_and_the_destination_takes_over(
        sandbox, peer, daemons, guest_factory, tmp_path):
    source, destination = daemons
    guest = guest_factory.create(NAME, start=False, http_port=HTTP_PORT)
    define_with_spec(guest, SPEC)
    guest.start()
    wait_status(source, NAME, "live after its startup probe",
                lambda e: e["live"] and e["probes"]["liveness"].get("lastResult", {})
                .get("outcome") == "success")
    assert watchdog_actions(guest.dom.XMLDesc(0)) == ["reset"]
    source_run = current_run_id(guest)
    xml_file = tmp_path / "destination.xml"
    xml_file.write_text(_destination_xml(guest.dom))

    with SlowMigration(sandbox.uri, peer.uri, guest, sandbox.bridge.ipv4,
                       xml_file) as migration:
        wait_status(source, NAME, "suppressed while migrating out",
                    lambda e: e["suppressed"] == "migrating out", timeout=30)
        guest.kill_service("httpd", "KILL")
        killed_at = time.time()
        samples = _watch_source(source, killed_at, FAILURE_WINDOW)
        # The window was real: the probe did fail in it, and the migration still runs.
        outcomes = {s["probes"]["liveness"].get("lastResult", {}).get("outcome")
                    for s in samples}
        assert outcomes - {"success", None}, f"the probe never failed: {samples[-1]}"
        assert migration.running()
        assert current_run_id(guest) == source_run
        migration.finish()

    peer_conn = libvirt.open(peer.uri)
    try:
        moved = peer_conn.lookupByName(NAME)
        assert moved.isActive()
        # The hook on the destination put the spec's action back.
        assert watchdog_actions(moved.XMLDesc(0)) == ["reset"]
        arrived_run = moved.ID()

        # The destination daemon adopts it; the dead server makes it restart the domain.
        wait_status(destination, NAME, "adopted on the destination",
                    lambda e: e["state"] == "running", timeout=60)
        wait_until(lambda: not moved.isActive()
                   or peer_conn.lookupByName(NAME).ID() != arrived_run,
                   timeout=60, what="the destination daemon to restart the dead guest")
        wait_until(lambda: "LivenessAction" in _event_types(destination, NAME), timeout=60,
                   what="the destination's LivenessAction event")
        assert "Adopted" in _event_types(destination, NAME)
    finally:
        try:
            dom = peer_conn.lookupByName(NAME)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        peer_conn.close()

    # The source let it go: no failure acted on there, and the domain is gone from it.
    source_events = _event_types(source, NAME)
    assert not {"LivenessFailed", "LivenessAction"} & set(source_events), source_events
    released = [event["message"] for event in source.client.events(domain=NAME)
                if event["type"] == "Released"]
    assert released == ["no longer monitored: stopped: migrated to another host"], released
    with pytest.raises(libvirt.libvirtError):
        guest.dom.connect().lookupByName(NAME)
