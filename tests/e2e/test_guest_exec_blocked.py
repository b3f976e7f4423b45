"""An exec probe against an agent that blocks guest-exec, before and after the guest plan.

The sandbox guest runs qemu-ga from its busybox init with the block list it is given
on the kernel command line, as RHEL's unit passes --block-rpcs=${BLOCK_RPCS} from
/etc/sysconfig/qemu-ga. "before" boots with the block list of RHEL 9.2's stock file;
"after" boots with the block list of that same file once the guest plan's agent edit
(vmhealth.guest.edits, what `guest setup` and cloud-init both apply) has run. The
probe is the daemon's own exec probe runner over libvirt (vmhealth.monitor).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vmhealth.guest import edits
from vmhealth.monitor.interfaces import Outcome
from vmhealth.monitor.libvirt_access import LibvirtGuestAccess
from vmhealth.monitor.probes.agent_exec import run_agent_exec_probe
from vmhealth.spec import parse_spec

pytestmark = pytest.mark.e2e

STOCK_RHEL92 = (Path(__file__).parents[1] / "data/guest/roots/rhel9.2/etc/sysconfig/qemu-ga")
BOOT_TIMEOUT = 120
PROBE = parse_spec({"readinessProbe": {"exec": {"command": ["cat", "/tmp/healthy.txt"]},
                                       "timeoutSeconds": 5, "periodSeconds": 10}}
                   ).readiness_probe


def _block_rpcs(text: str) -> tuple[str, ...]:
    line = next(line for line in text.splitlines() if line.startswith("BLOCK_RPCS="))
    return tuple(name for name in line.split("=", 1)[1].split(",") if name)


def _probe(dom):
    async def run():
        with ThreadPoolExecutor(2) as agent_pool, ThreadPoolExecutor(1) as control_pool:
            access = LibvirtGuestAccess(dom, agent_pool=agent_pool, control_pool=control_pool)
            return await run_agent_exec_probe(PROBE, access)
    return asyncio.run(run())


@pytest.fixture(scope="module")
def guests(guest_factory):
    stock = STOCK_RHEL92.read_text()
    opened, changes = edits.open_exec_in_env(stock)
    assert changes, "the plan's agent edit must change RHEL 9.2's stock file"
    before = guest_factory.create("exec-blocked", agent_block_rpcs=_block_rpcs(stock),
                                  watchdog_action=None)
    after = guest_factory.create("exec-opened", agent_block_rpcs=_block_rpcs(opened),
                                 watchdog_action=None)
    return before, after


def test_exec_probe_reports_guest_exec_blocked(guests):
    before, _after = guests
    assert "guest-exec" in before.spec.agent_block_rpcs
    before.wait_for_agent(timeout=BOOT_TIMEOUT)
    result = _probe(before.dom)
    assert result.outcome is Outcome.FAILURE, result
    assert result.message.startswith("guest-exec is blocked by the guest agent's RPC filter")
    assert "vmhealth guest setup" in result.message


def test_exec_probe_passes_after_the_plan_opened_the_filter(guests):
    _before, after = guests
    # The plan removed exactly guest-exec and guest-exec-status; the rest stays blocked.
    assert after.spec.agent_block_rpcs and "guest-exec" not in after.spec.agent_block_rpcs
    assert "guest-file-open" in after.spec.agent_block_rpcs
    after.wait_for_agent(timeout=BOOT_TIMEOUT)
    result = _probe(after.dom)
    assert result.outcome is Outcome.SUCCESS, result
    assert result.message == "cat exited 0; output: healthy"
