"""`vmhealth status -o wide`: the ENGINE column says which engine runs each probe."""

from __future__ import annotations

import pytest

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
