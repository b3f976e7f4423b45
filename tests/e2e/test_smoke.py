"""Smoke tests against the real libvirtd, QEMU (TCG) and the busybox + qemu-ga guest.

All guests of this module are started together by one fixture, so they boot in
parallel; each test then waits only for what it needs.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests import seeds

pytestmark = pytest.mark.e2e

HTTP_PORT = 1500
TCP_PORT = 1501
BOOT_TIMEOUT = 120  # guest-ping is ~5-10 s after start alone; 3 TCG guests share 2 cores
WATCHDOG_MANIFEST = Path(__file__).parents[1] / "data" / "manifests" / "vmi-with-watchdog.yaml"
SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def _vmhealth_cli() -> list[str]:
    script = Path(sys.executable).with_name("vmhealth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmhealth.cli"]


@pytest.fixture(scope="module")
def guests(guest_factory, recorder, sandbox):
    """web: HTTP + TCP + healthy file; dog: watchdog fed by busybox; applied: no
    watchdog in its XML until `vmhealth apply` adds the seed's."""
    web = guest_factory.create("smoke-web", http_port=HTTP_PORT, tcp_port=TCP_PORT,
                               watchdog_feeder=True)
    dog = guest_factory.create("smoke-dog", watchdog_feeder=True)
    applied = guest_factory.create("smoke-applied", start=False, watchdog_feeder=True,
                                   watchdog_action=None)
    # The CLI's outcome is recorded, not asserted here: the harness tests above must
    # not depend on it.  test_apply_* assert it.
    apply_run = subprocess.run(
        [*_vmhealth_cli(), "--connect", sandbox.uri, "apply", applied.name,
         "-f", str(WATCHDOG_MANIFEST)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if apply_run.returncode == 0:
        applied.start()
    return {"web": web, "dog": dog, "applied": applied, "apply_run": apply_run}


def test_guest_boots_and_agent_answers(guests):
    web = guests["web"]
    seconds = web.wait_for_agent(timeout=BOOT_TIMEOUT)
    print(f"{web.name}: guest-ping answered {seconds:.1f}s after start")
    assert web.ping(timeout=5)
    assert "vmh-init: ready" in web.console()


def test_guest_exec_reads_healthy_file(guests):
    web = guests["web"]
    web.wait_for_agent(timeout=BOOT_TIMEOUT)
    result = web.exec("cat", "/tmp/healthy.txt")
    assert (result.exitcode, result.stdout) == (0, "healthy\n")
    # The same probe on a missing file must fail, or the check above proves nothing.
    missing = web.exec("cat", "/tmp/no-such-file.txt")
    assert missing.exitcode != 0


def test_host_reaches_guest_http_over_bridge(guests):
    web = guests["web"]
    web.wait_for_port(HTTP_PORT, timeout=BOOT_TIMEOUT)
    url = f"http://{web.spec.ipv4}:{HTTP_PORT}/"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - our guest
        assert response.status == 200
        assert b"vmhealth e2e guest" in response.read()


def test_host_reaches_guest_over_ipv6(guests):
    web = guests["web"]
    web.wait_for_port(HTTP_PORT, timeout=BOOT_TIMEOUT, family=socket.AF_INET6)


def test_killed_tcp_listener_refuses_connections(guests):
    web = guests["web"]
    web.wait_for_port(TCP_PORT, timeout=BOOT_TIMEOUT)
    web.kill_service("tcp", "KILL")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((web.spec.ipv4, TCP_PORT), timeout=5).close()


def _assert_watchdog_powers_off(guest, recorder):
    guest.wait_for_agent(timeout=BOOT_TIMEOUT)
    assert guest.service_pid("watchdog") > 0
    # Fed, the watchdog must not have fired (the check below could pass otherwise).
    assert [e for e in recorder.events(guest.name) if e.kind == "watchdog"] == []
    assert guest.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    guest.kill_service("watchdog", "KILL")

    # busybox watchdog -T 4000ms: the device fires about 4 s after the last feed.
    event = recorder.wait_for(guest.name, "watchdog", timeout=30)
    assert event.code == libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF
    reason = guest.wait_for_state(libvirt.VIR_DOMAIN_SHUTOFF, timeout=30)
    assert reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED


def test_watchdog_fires_when_feeder_is_killed(guests, recorder):
    _assert_watchdog_powers_off(guests["dog"], recorder)


def test_apply_puts_seed_watchdog_on_domain(guests):
    run = guests["apply_run"]
    assert run.returncode == 0, f"vmhealth apply failed:\n{run.stdout}\n{run.stderr}"
    xml = guests["applied"].dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    root = etree.fromstring(xml.encode(), SAFE_PARSER)
    watchdogs = root.findall("devices/watchdog")
    assert [(w.get("model"), w.get("action")) for w in watchdogs] == [("i6300esb", "poweroff")]
    assert len(root.findall("metadata/*")) == 1


def test_applied_watchdog_fires_when_feeder_is_killed(guests, recorder):
    if guests["apply_run"].returncode != 0:
        pytest.fail("vmhealth apply failed (see test_apply_puts_seed_watchdog_on_domain)")
    _assert_watchdog_powers_off(guests["applied"], recorder)


def test_manifest_copy_matches_seed():
    """tests/data/manifests/vmi-with-watchdog.yaml is the seed's example, verbatim."""
    examples = [text for _, _, text in seeds.seed_examples() if "vmi-with-watchdog" in text]
    if not examples:
        pytest.skip(f"seed documents not found in {seeds.seeds_dir()}")
    assert WATCHDOG_MANIFEST.read_text() in examples
