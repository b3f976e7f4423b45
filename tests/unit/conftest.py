"""Fixtures for unit tests: a private libvirt test-driver connection per test."""

from __future__ import annotations

from pathlib import Path

import hypothesis  # noqa: F401 - see below
import libvirt
import pytest

# Imported here, at collection, and not by hypothesis' pytest plugin at the end of a
# run: there, deep in pluggy's stack, Debian 12's Python 3.11.2 failed to compile it
# ("SystemError: AST constructor recursion depth mismatch", a CPython bug) after
# test_daemon_access.py's address tests, turning a green run of that file alone into
# exit status 1.

DRIVER_XML = """<node>
  <domain type='test'>
    <name>web1</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory>65536</memory>
    <os><type arch='x86_64' machine='pc'>hvm</type></os>
    <devices>
      <graphics type='vnc' passwd='s3cret-pass'/>
    </devices>
  </domain>
  <domain type='test'>
    <name>ib700vm</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1940</uuid>
    <memory>65536</memory>
    <os><type arch='x86_64' machine='pc'>hvm</type></os>
    <devices>
      <watchdog model='ib700' action='reset'/>
    </devices>
  </domain>
  <domain type='test'>
    <name>q35vm</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e1941</uuid>
    <memory>65536</memory>
    <os><type arch='x86_64' machine='pc-q35-8.0'>hvm</type></os>
    <devices/>
  </domain>
</node>
"""


@pytest.fixture
def driver_path(tmp_path: Path) -> Path:
    path = tmp_path / "driver.xml"
    path.write_text(DRIVER_XML)
    return path


@pytest.fixture
def conn(driver_path: Path):
    """A test-driver connection of this test's own (never the shared test:///default)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    connection = libvirt.open(f"test://{driver_path}")
    yield connection
    connection.close()
