"""The harness's own promises that later tests rely on: hooks installed into the
sandbox's /etc/libvirt/hooks/qemu.d are called, and a libvirtd restart keeps running
guests running (and runs the reconnect hook)."""

from __future__ import annotations

import libvirt
import pytest

from tools.sandbox.waiting import wait_until

pytestmark = pytest.mark.e2e

CALLS = "/run/vmhealth/e2e-hook-calls.log"
# A hook that records domain, operation and sub-operation (not the extra argument,
# which for release is "-" before libvirt 10.5 and the shutoff reason after).  It
# drains stdin (the domain XML) so libvirt's write to it never fails, and exits.
HOOK = f"""#!/bin/sh
cat > /dev/null
echo "$1 $2 $3" >> {CALLS}
"""
HOOK_NAME = "50-e2e-record"


def _calls(domain: str) -> list[str]:
    try:
        with open(CALLS) as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == domain]


@pytest.fixture(scope="module")
def restarted(sandbox, guest_factory, restart_libvirtd, tmp_path_factory):
    """A booted guest, then the recording hook installed and libvirtd restarted (a
    restart, not SIGHUP, so the hook is surely active when the fixture returns)."""
    keep = guest_factory.create("sbx-keep")
    keep.wait_for_agent(timeout=120)
    run_id = keep.dom.ID()
    script = tmp_path_factory.mktemp("hook") / HOOK_NAME
    script.write_text(HOOK)
    sandbox.install_hook(script, reload=False)
    restart_libvirtd()
    yield {"keep": keep, "run_id": run_id}
    sandbox.remove_hook(HOOK_NAME)


def test_running_guest_survives_libvirtd_restart(restarted):
    keep = restarted["keep"]
    assert keep.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert keep.dom.ID() == restarted["run_id"]
    assert keep.ping(timeout=10)


def test_restart_runs_the_reconnect_hook(restarted):
    # libvirtd reconnects to running domains in a thread of its own, so the hook may
    # run a moment after the restarted daemon already answers.
    name = restarted["keep"].name
    wait_until(lambda: "reconnect begin" in _calls(name), timeout=30,
               what=f"the reconnect hook call for {name}")


def test_hooks_run_on_start_and_stop(restarted, guest_factory):
    guest = guest_factory.create("sbx-hooked")
    guest.dom.destroy()
    assert _calls(guest.name) == [
        "prepare begin",
        "start begin",
        "started begin",
        "stopped end",
        "release end",
    ]
