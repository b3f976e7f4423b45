"""Fixtures for the end-to-end tests: one private libvirtd for the whole run, one cached
guest image, and a factory for TCG guests.

Run these tests through tests/e2e/run (see docs/e2e.md): it puts pytest into the
sandbox's namespaces.  Outside them, or without QEMU, the tests skip with the reason;
in CI (CI set) they fail instead, so a broken setup cannot pass as green.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.ci import missing
from tools.sandbox import events, guest_image, namespace, paths
from tools.sandbox.guests import Guest, GuestFactory
from tools.sandbox.sandbox import Sandbox

CONSOLE_TAIL = 80
# What the run really started (libvirtd, QEMU, the guest kernel), for the summary.
COMPONENTS: list[str] = []


def _unavailable() -> str | None:
    if not namespace.inside():
        return "e2e tests run inside the libvirt sandbox: use tests/e2e/run [pytest args]"
    if os.geteuid() != 0:
        return "e2e tests need root"
    for tool in ("qemu-system-x86_64", "libvirtd", "virtlogd", "virsh", "ip", "cpio"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/install-deps"
    return None


def _refuse(reason: str) -> None:
    missing(f"e2e tests cannot run here: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test under tests/e2e is an e2e test, whether or not it says so.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_environment():
    """Skip (fail in CI) unless this runs where the sandbox can start; for tests that
    start a sandbox of their own, like the demo's."""
    reason = _unavailable()
    if reason:
        _refuse(reason)


@pytest.fixture(scope="session")
def sandbox(e2e_environment):
    box = Sandbox(paths.new_log_dir("pytest"))
    start = time.monotonic()
    try:
        box.start()
    except BaseException:
        box.stop()
        raise
    print(f"\ne2e: sandbox up in {time.monotonic() - start:.1f}s, logs in {box.log_dir}")
    yield box
    box.stop()
    changed = box.host_changes()
    assert not changed, f"the sandbox changed host files: {changed}"


@pytest.fixture(scope="session")
def guest_image_files(sandbox):
    return guest_image.build()


@pytest.fixture(scope="session")
def recorder(sandbox):
    """Watchdog and lifecycle events of every domain, from the session's start (on a
    connection of its own)."""
    rec = events.EventRecorder(events.connect(sandbox.uri))
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def guest_factory(sandbox, guest_image_files):
    factory = GuestFactory(sandbox, events.connect(sandbox.uri), guest_image_files)
    COMPONENTS[:] = factory.components()
    print("\ne2e: " + "; ".join(COMPONENTS))
    yield factory
    factory.cleanup()


@pytest.fixture
def conn(guest_factory):
    """The current libvirt connection (a new one after restart_libvirtd)."""
    return guest_factory.conn


@pytest.fixture(scope="session")
def restart_libvirtd(sandbox, guest_factory, recorder):
    """A function that restarts the sandbox's libvirtd (running domains keep running)
    and moves the factory, its guests and the recorder to new connections."""

    def restart(**libvirtd_options):
        sandbox.restart_libvirtd(**libvirtd_options)
        guest_factory.reconnect(events.connect(sandbox.uri))
        recorder.reconnect(events.connect(sandbox.uri))
        return guest_factory.conn

    return restart


@pytest.fixture(autouse=True)
def _note_guests_created(request):
    """Remember how many guests existed when the test started, so a failure report
    can also show the consoles of guests the test created itself."""
    if "guest_factory" in request.fixturenames:
        factory = request.getfixturevalue("guest_factory")
        request.node.vmh_factory = factory
        request.node.vmh_first_guest = len(factory.guests)


def _guests_of(item: pytest.Item) -> list[Guest]:
    found: list[Guest] = []
    factory = getattr(item, "vmh_factory", None)
    if factory is not None:
        found.extend(factory.guests[item.vmh_first_guest:])
    for value in getattr(item, "funcargs", {}).values():
        candidates = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else [value])
        found.extend(v for v in candidates if isinstance(v, Guest) and v not in found)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    # A failing test shows what its guests printed: boot errors, init messages.
    for guest in _guests_of(item):
        report.sections.append(
            (f"console of {guest.name} (last {CONSOLE_TAIL} lines, {guest.console_log})",
             guest.console(tail=CONSOLE_TAIL)))


def pytest_terminal_summary(terminalreporter) -> None:
    # Always shown (also without -s): which versions these results are about.
    if COMPONENTS:
        terminalreporter.write_sep("-", "e2e: real components started")
        for line in COMPONENTS:
            terminalreporter.write_line(line)
