"""The SELinux policy module under guest/selinux compiles with the real tools."""

from __future__ import annotations

import subprocess

from tests.ci import require_tool
from tests.unit.guest_support import REPO

from vmhealth.guest.plan import POLICY_MODULE, PROBE_SCRIPT_TYPE

SOURCE = REPO / "guest" / "selinux"


def test_policy_module_compiles_and_packages(tmp_path):
    checkmodule = require_tool("checkmodule")
    semodule_package = require_tool("semodule_package")
    mod = tmp_path / f"{POLICY_MODULE}.mod"
    pp = tmp_path / f"{POLICY_MODULE}.pp"
    subprocess.run([checkmodule, "-M", "-m", "-o", str(mod), str(SOURCE / f"{POLICY_MODULE}.te")],
                   check=True, capture_output=True, timeout=60)
    subprocess.run([semodule_package, "-o", str(pp), "-m", str(mod), "-f",
                    str(SOURCE / f"{POLICY_MODULE}.fc")], check=True, capture_output=True,
                   timeout=60)
    assert pp.stat().st_size > mod.stat().st_size > 0


def test_module_defines_the_type_the_plan_labels_with():
    te = (SOURCE / f"{POLICY_MODULE}.te").read_text()
    fc = (SOURCE / f"{POLICY_MODULE}.fc").read_text()
    assert f"type {PROBE_SCRIPT_TYPE};" in te
    assert f"module {POLICY_MODULE} " in te
    assert all(PROBE_SCRIPT_TYPE in line for line in fc.splitlines() if line.strip())
