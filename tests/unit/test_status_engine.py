"""Which engine runs each probe: said at start-up, in status JSON and `-o wide`."""

from __future__ import annotations

import asyncio
import logging
import sys
import types

import pytest
from tests.ci import missing

from vmhealth import __version__
from vmhealth.monitor import native_lane
from vmhealth.monitor.domain_monitor import ProbeStatus
from vmhealth.status_table import status_table


def _engine(probes: dict) -> str:
    table = status_table([{"name": "web1", "state": "running", "probes": probes}], [],
                         0.0, wide=True)
    return table.rows[0][table.header.index("ENGINE")].text


@pytest.mark.parametrize(("probes", "shown"), [
    ({"readiness": {"engine": "native"}, "liveness": {"engine": "native"}}, "native"),
    ({"readiness": {"engine": "native"}, "liveness": {"engine": "python"}},
     "readiness native, liveness python"),
    ({"startup": {"engine": "python"}}, "python"),
    # a daemon that reports only nativeLane
    ({"liveness": {"nativeLane": True}, "readiness": {"nativeLane": False}},
     "readiness python, liveness native"),
    ({}, "-"),
])
def test_engine_column(probes, shown):
    assert _engine(probes) == shown


def test_status_json_names_the_engine_of_each_probe():
    status = ProbeStatus(healthy=True, reason="", since=0.0)
    assert status.to_dict(native_lane=True)["engine"] == "native"
    assert status.to_dict(native_lane=False)["engine"] == "python"


# -- which engine, said at start-up -------------------------------------------------


def test_start_up_says_python_when_the_lane_is_turned_off(caplog):
    caplog.set_level(logging.INFO, logger=native_lane.__name__)
    assert native_lane.NativeLanes.start(enabled=False) is None
    assert "probe engine: python for every probe (native_lane = no)" in caplog.text


def test_start_up_says_python_and_why_without_the_lane(caplog, monkeypatch):
    monkeypatch.setattr(native_lane, "_fastlane", None)
    monkeypatch.setattr(native_lane, "UNAVAILABLE", "the native probe lane is not installed")
    caplog.set_level(logging.INFO, logger=native_lane.__name__)
    assert native_lane.NativeLanes.start() is None
    assert "probe engine: python for every probe: the native probe lane is not installed" \
        in caplog.text


def test_start_up_says_native_with_the_lane(caplog):
    if native_lane.ENGINE != native_lane.NATIVE:
        missing("the native lane is not installed (pip install ./src/native)")
    caplog.set_level(logging.INFO, logger=native_lane.__name__)

    async def start():
        lanes = native_lane.NativeLanes.start()
        assert lanes is not None
        lanes.close()

    asyncio.run(start())
    assert f"probe engine: native (vmhealth_fastlane {__version__})" in caplog.text


@pytest.mark.parametrize(("module", "why"), [
    (None, "is not installed"),
    (types.SimpleNamespace(__version__="0.0.1"), "is version 0.0.1, vmhealth"),
    (types.SimpleNamespace(), "is version unknown, vmhealth"),
])
def test_a_missing_lane_or_one_of_another_version_is_not_used(monkeypatch, module, why):
    monkeypatch.setitem(sys.modules, "vmhealth_fastlane", module)
    engine, reason = native_lane._load_engine()
    assert engine is None and why in reason
