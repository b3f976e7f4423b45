"""The daemon's API over a real unix socket, with a fake status source behind it."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from vmhealth.monitor.api import ApiServer
from vmhealth.monitor.client import ApiClient, ApiError, ApiUnavailable
from vmhealth.monitor.events import EventLog
from vmhealth.monitor.interfaces import Outcome, ProbeResult
from vmhealth.monitor.metrics import Metrics
from vmhealth.spec import ProbeKind

READY = {"name": "web1", "uuid": "u-1", "state": "running", "suppressed": None,
         "ready": True, "live": True, "probes": {}}
NOT_READY = {"name": "web2", "uuid": "u-2", "state": "paused", "suppressed": "paused by the user",
             "ready": False, "live": True,
             "probes": {"readiness": {"healthy": False, "reason": "connection refused",
                                      "since": 0}}}


class FakeSource:
    def __init__(self) -> None:
        self.events = EventLog(10)
        self.metrics = Metrics()
        self.domains = {"web1": READY, "web2": NOT_READY}
        self.probed: list[tuple[str, ProbeKind]] = []

    def status(self):
        return {"libvirtConnected": True, "domains": list(self.domains.values())}

    def domain_status(self, key):
        return self.domains[key]

    async def run_probe_once(self, key, kind):
        self.probed.append((key, kind))
        return ProbeResult(Outcome.FAILURE, "exit code 1", 0.5, time.time())


class Server:
    """The API served from a loop in a thread, so the blocking client can call it."""

    def __init__(self, socket_path: str) -> None:
        self.source = FakeSource()
        self.loop = asyncio.new_event_loop()
        self.api = ApiServer(self.source, socket_path)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.api.start())

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def record(self, *args, **fields):
        async def record():
            self.source.events.record(*args, **fields)
        self.call(record())

    def close(self) -> None:
        async def end_streams():  # the daemon ends event streams before the API stops
            self.source.events.close()
        self.call(end_streams())
        self.call(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(tmp_path: Path):
    srv = Server(str(tmp_path / "run" / "api.sock"))
    yield srv
    srv.close()


@pytest.fixture
def client(server):
    return ApiClient(server.api.socket_path, timeout=10)


def test_socket_is_group_accessible_only(server):
    mode = stat.S_IMODE(os.stat(server.api.socket_path).st_mode)
    assert mode == 0o660


def test_status_of_all_and_one(client):
    assert [d["name"] for d in client.status()["domains"]] == ["web1", "web2"]
    assert client.status("web2")["probes"]["readiness"]["reason"] == "connection refused"


def test_unknown_domain_is_404_with_a_message(client):
    with pytest.raises(ApiError) as error:
        client.status("nosuch")
    assert error.value.status == 404
    assert "'nosuch' is not monitored" in str(error.value)


def test_ready_endpoint_answers_200_or_503(client):
    import http.client
    for domain, expected_status, expected_text in (
            ("web1", 200, "ready\n"),
            ("web2", 503, "not ready: readiness: connection refused\n"),
            ("nosuch", 503, "not ready: not monitored\n")):
        conn, response = client._request("GET", f"/ready/{domain}")
        assert (response.status, response.read().decode()) == (expected_status, expected_text)
        conn.close()
    assert http.client  # the client is plain http.client over the unix socket


def test_events_backlog_then_follow(server, client):
    server.record("web1", "Ready", "readiness: ready")
    server.record("web2", "NotReady", "readiness: refused")
    assert [e["type"] for e in client.events()] == ["Ready", "NotReady"]
    assert [e["type"] for e in client.events(domain="web2")] == ["NotReady"]
    stream = client.events(follow=True, since=2)
    threading.Timer(0.2, server.record, ("web1", "Watchdog", "watchdog fired"),
                    {"action": "poweroff"}).start()
    event = next(stream)
    assert (event["type"], event["fields"]) == ("Watchdog", {"action": "poweroff"})
    stream.close()


def test_metrics_in_prometheus_format(server, client):
    server.source.metrics.set_healthy("web1", ProbeKind.READINESS, True)
    conn, response = client._request("GET", "/metrics")
    body = response.read().decode()
    conn.close()
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert 'vmhealth_probe_healthy{domain="web1",probe="readiness"} 1.0' in body


def test_probe_once(server, client):
    result = client.probe("web2", "readiness")
    assert (result["outcome"], result["message"]) == ("failure", "exit code 1")
    assert server.source.probed == [("web2", ProbeKind.READINESS)]
    with pytest.raises(ApiError) as error:
        client.probe("web2", "sideways")
    assert error.value.status == 400 and "liveness, readiness, startup" in str(error.value)


def test_no_daemon_names_the_socket(tmp_path: Path):
    with pytest.raises(ApiUnavailable) as error:
        ApiClient(str(tmp_path / "none.sock")).status()
    assert "none.sock" in str(error.value) and "VMHEALTH_SOCKET" in str(error.value)


def test_stale_socket_from_a_killed_daemon_is_replaced(tmp_path: Path):
    path = tmp_path / "api.sock"
    path.write_text("left over")
    srv = Server(str(path))
    try:
        assert ApiClient(str(path)).status("web1")["ready"] is True
    finally:
        srv.close()
    assert not path.exists()


def test_cli_status_wait_probe_and_events(server):
    from click.testing import CliRunner

    from vmhealth.cli import main

    server.record("web1", "Watchdog", "watchdog fired; action poweroff", action="poweroff")
    runner = CliRunner()

    def cli(*args):
        return runner.invoke(main, [*args, "--socket", server.api.socket_path])

    everything = cli("status")
    assert everything.exit_code == 0
    assert "web2 (u-2): state paused, ready no, live yes" in everything.output
    assert "failures not counted: domain is paused by the user" in everything.output
    assert cli("status", "web1").exit_code == 0
    assert cli("status", "web2").exit_code == 1  # for Pacemaker's monitor_scripts
    assert "watchdog fired; action poweroff" in cli("events").output
    waited = cli("wait", "web2", "--for", "ready", "--timeout", "1s")
    assert waited.exit_code == 1
    assert "not ready after 1s (readiness: connection refused)" in waited.output
    assert cli("wait", "web1", "--for", "live", "--timeout", "1s").exit_code == 0
    probed = cli("probe", "web2", "readiness")
    assert probed.exit_code == 1 and "failure in 500 ms: exit code 1" in probed.output
