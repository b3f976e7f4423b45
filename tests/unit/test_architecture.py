"""The import rules of docs/architecture.md, checked on the source.

Every `import` and `from ... import` in src/vmhealth is read with `ast` (those inside
functions too: a lazy import is still a dependency), resolved to the module it names,
and held against the rules below. A rule broken here is a layer broken: the hook that
must start with `python3 -I -S`, the guest install without libvirt, the probe engine
that knows guests only through interfaces.py.

Run alone: .venv/bin/python -m pytest -q tests/unit/test_architecture.py
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

import vmhealth

SOURCE = Path(vmhealth.__file__).resolve().parent.parent

# Third-party modules only the host side may use (the guest install lacks them).
HOST_ONLY = {"libvirt", "libvirt_qemu", "libvirtaio", "aiohttp", "prometheus_client",
             "httptools", "bcrypt", "inotify_simple", "pycdlib", "vmhealth_fastlane"}
# The daemon's parts around the probe engine: the engine never reaches into them.
DAEMON_PARTS = {f"vmhealth.monitor.{name}" for name in (
    "daemon", "registry", "libvirt_connection", "lifecycle_events", "liveness_policy",
    "status_view", "libvirt_access", "agent_connections", "actions", "adoption", "api",
    "web_listener", "config", "run_strategy", "spool")}
PROBE_ENGINE_PREFIXES = ("vmhealth.monitor.probes", "vmhealth.monitor.prober",
                         "vmhealth.monitor.interfaces", "vmhealth.monitor.native_lane",
                         "vmhealth.monitor.coarse_timers")
HOST_SIDE_OF_CLI_GUEST = frozenset({"vmhealth.connection", "vmhealth.seediso"})
CORE = {"vmhealth.spec_rules", "vmhealth.spec", "vmhealth.metadata", "vmhealth.jsontext",
        "vmhealth.xmlsafe", "vmhealth.excerpt", "vmhealth.domainxml", "vmhealth.manifest"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SOURCE / "vmhealth").rglob("*.py"))}


@cache
def imports(module: str) -> frozenset[str]:
    """The modules `module` imports: vmhealth modules by full name, others by top name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(modules()[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from vmhealth.hook import spool` depends on the module vmhealth.hook.spool.
            names = [f"{node.module}.{alias.name}" for alias in node.names
                     if f"{node.module}.{alias.name}" in modules()] or [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "vmhealth":
                found.add(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return frozenset(found)


def reach(start: str, skip: frozenset[str] = frozenset()) -> set[str]:
    """Every module `start` imports, directly or through other vmhealth modules (not
    through those in `skip`)."""
    seen, todo = set(), [start]
    while todo:
        for name in imports(todo.pop()):
            if name not in seen and name not in skip:
                seen.add(name)
                if name in modules():
                    todo.append(name)
    return seen


def offenders(rule, sources) -> dict[str, list[str]]:
    return {source: sorted(bad) for source in sources
            if (bad := [name for name in imports(source) if rule(name)])}


def under(prefix: str) -> list[str]:
    return [name for name in modules() if name == prefix or name.startswith(prefix + ".")]


def test_the_rules_see_the_whole_package():
    assert {"vmhealth.hook.main", "vmhealth.monitor.daemon", "vmhealth.guest.setup",
            "vmhealth.monitor.probes.http", "vmhealth.cli"} <= set(modules())
    assert set(modules()) >= DAEMON_PARTS, DAEMON_PARTS - set(modules())
    assert "libvirt" in imports("vmhealth.monitor.registry")  # third party is seen
    assert "vmhealth.hook.spool" in imports("vmhealth.monitor.config")  # from-imports too


@pytest.mark.parametrize("entry", ["vmhealth.hook.main", "vmhealth.hook.launcher"])
def test_the_hook_imports_nothing_outside_the_standard_library(entry):
    """libvirt runs the hook with `python3 -I -S`: no site-packages, so no lxml, no
    click, no libvirt; and nothing of the daemon, the guest side or the CLI."""
    reached = reach(entry)
    assert {name for name in reached if not name.startswith("vmhealth")} == set()
    assert {name for name in reached
            if name.startswith(("vmhealth.monitor", "vmhealth.guest", "vmhealth.cli"))} \
        == set()


@pytest.mark.parametrize("entry", ["vmhealth.guest.setup", "vmhealth.cloudinit_render",
                                   "vmhealth.cli_guest"])
def test_the_guest_side_needs_no_host_dependency(entry):
    """A guest installs vmhealth for `vmhealth guest setup` without libvirt-python or
    aiohttp (tests/integration/test_guest_install.py installs it so). cli_guest also
    holds the host's `cloudinit seed`, whose modules (connection, seediso) import
    libvirt and pycdlib only when that command runs; nothing else may."""
    reached = reach(entry, skip=HOST_SIDE_OF_CLI_GUEST)
    assert reached & HOST_ONLY == set()
    assert {name for name in reached if name.startswith("vmhealth.monitor")} == set()


def test_the_core_depends_on_no_side():
    """spec_rules, spec, metadata, domainxml... are shared by hook, daemon, guest side
    and CLI; they import none of them."""
    sides = ("vmhealth.monitor", "vmhealth.hook", "vmhealth.guest", "vmhealth.cli")
    assert offenders(lambda name: name.startswith(sides), sorted(CORE)) == {}


def test_the_probe_engine_never_reaches_into_the_daemon():
    """Probes see a guest only through interfaces.py (GuestAccess, ProbeStarter); the
    libvirt calls, the registry and the actions are the daemon's."""
    engine = [name for name in modules() if name.startswith(PROBE_ENGINE_PREFIXES)]
    assert offenders(lambda name: name in DAEMON_PARTS or name in HOST_ONLY - {
        "httptools", "vmhealth_fastlane"}, engine) == {}


def test_the_lane_depends_on_the_handlers_data_not_back():
    """native_lane turns what the handlers describe (interfaces.Recipe) into C work;
    no handler imports the lane, and only the lane imports the C module."""
    assert offenders(lambda name: name == "vmhealth.monitor.native_lane",
                     under("vmhealth.monitor.probes")) == {}
    importers = [name for name in modules() if "vmhealth_fastlane" in imports(name)]
    assert importers == ["vmhealth.monitor.native_lane"]


def test_the_daemon_is_composed_not_imported():
    """Its parts never import monitor.daemon; only `vmhealth daemon` (cli_daemon) does."""
    importers = [name for name in modules() if "vmhealth.monitor.daemon" in imports(name)]
    assert importers == ["vmhealth.cli_daemon"]


def test_the_monitor_uses_only_the_hooks_spool_contract():
    """The hook and the daemon share one thing, the spool directory's layout."""
    hook = under("vmhealth.hook")
    found = {name for source in under("vmhealth.monitor") for name in imports(source)
             if name in hook}
    assert found <= {"vmhealth.hook.spool"}
    assert offenders(lambda name: name.startswith(("vmhealth.cli", "vmhealth.guest")),
                     under("vmhealth.monitor")) == {}


def test_nothing_imports_the_cli_root():
    assert [name for name in modules() if "vmhealth.cli" in imports(name)] == []
