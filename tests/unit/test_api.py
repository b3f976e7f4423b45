"""The daemon's API over a real unix socket, with a fake status source behind it."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.unit.api_support import Server

from vmhealth.monitor.api import (
    ON_DEMAND_INTERVAL,
    OnDemandProbes,
    Peer,
    ProbePermission,
)
from vmhealth.monitor.client import ApiClient, ApiError, ApiUnavailable
from vmhealth.monitor.events import MESSAGE_LIMIT
from vmhealth.spec import ProbeKind


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
            ("web2", 503, "not ready: domain paused by the user\n"),
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


def test_probe_result_message_is_bounded_and_printable(server, client):
    server.source.message = "exit \x1b]0;pwned\x07\x1b[2J" * 500_000
    message = client.probe("web2", "readiness")["message"]
    assert message.isprintable() and len(message) <= MESSAGE_LIMIT + 3 and "pwned" in message


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
    assert everything.output.splitlines()[2].split()[:4] == ["web2", "paused", "no", "yes"]
    assert "domain paused by the user" in cli("status", "-o", "wide").output
    assert cli("status", "web1").exit_code == 0
    assert cli("status", "web2").exit_code == 1  # for Pacemaker's monitor_scripts
    assert "watchdog fired; action poweroff" in cli("events").output
    waited = cli("wait", "web2", "--for", "ready", "--timeout", "1s")
    assert waited.exit_code == 1
    assert "not ready after 1s (readiness: connection refused)" in waited.output
    assert cli("wait", "web1", "--for", "live", "--timeout", "1s").exit_code == 0
    probed = cli("probe", "web2", "readiness")
    assert probed.exit_code == 1 and "failure in 500 ms: exit code 1" in probed.output


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_concurrent_probe_requests_share_one_run_then_429(tmp_path: Path):
    clock = Clock()
    on_demand = OnDemandProbes(clock=clock)
    srv = Server(str(tmp_path / "api.sock"), on_demand=on_demand)
    try:
        async def hold():
            srv.source.hold = asyncio.Event()
        srv.call(hold())
        client = ApiClient(srv.api.socket_path, timeout=30)
        with ThreadPoolExecutor(100) as pool:
            futures = [pool.submit(client.probe, "web2", "readiness") for _ in range(100)]
            until(lambda: on_demand.requests == 100)  # all of them in, the run held
            srv.loop.call_soon_threadsafe(srv.source.hold.set)
            results = [future.result(30) for future in futures]
        assert srv.source.probed == [("web2", ProbeKind.READINESS)]
        assert {r["message"] for r in results} == {"exit code 1"}
        # The run just ended: the same probe again is refused, with when to retry.
        with pytest.raises(ApiError) as error:
            client.probe("web2", "readiness")
        assert (error.value.status, error.value.retry_after) == (429, 1)
        assert "retry in 1 s" in str(error.value)
        client.probe("web2", "liveness")  # another probe (or domain) has its own limit
        clock.now += ON_DEMAND_INTERVAL
        client.probe("web2", "readiness")
        assert len(srv.source.probed) == 3
    finally:
        srv.close()


def test_cli_probe_waits_out_the_rate_limit(tmp_path: Path):
    from click.testing import CliRunner

    from vmhealth.cli import main

    srv = Server(str(tmp_path / "api.sock"), on_demand=OnDemandProbes(interval=0.2))
    try:
        for _ in range(2):
            result = CliRunner().invoke(main, ["probe", "web2", "readiness", "--socket",
                                               srv.api.socket_path])
            assert result.exit_code == 1 and "failure in 500 ms" in result.output
        assert len(srv.source.probed) == 2
    finally:
        srv.close()


def test_probe_permission_rules():
    def allowed(peer, group=""):
        return ProbePermission(group, peer=lambda _request: peer).refusal(None) is None

    users = grp.getgrnam("users").gr_gid
    # Somebody else: neither root nor the user running the tests (the daemon's user).
    other = 65534 if os.geteuid() != 65534 else 65533
    assert allowed(Peer(0, 0, frozenset()))
    assert allowed(Peer(os.geteuid(), 1234, frozenset()))  # the daemon's own user
    assert not allowed(Peer(other, 65534, frozenset()))
    assert not allowed(Peer(other, 65534, frozenset()), group="")
    assert allowed(Peer(other, users, frozenset()), group="users")
    assert allowed(Peer(other, 65534, frozenset({7, users})), group="users")
    assert not allowed(Peer(other, 65534, frozenset({7})), group="users")
    refusal = ProbePermission("users", peer=lambda _request: None).refusal(None)
    assert "needs the unix socket" in refusal  # TCP cannot say who calls
    refusal = ProbePermission("", peer=lambda _r: Peer(1000, 1000, frozenset())).refusal(None)
    assert "for root only (uid 1000 is not" in refusal and "probe_group" in refusal


# A client in another process, as another user: the credentials the kernel passes on
# the unix socket (SO_PEERCRED, SO_PEERGROUPS) are what the daemon checks.
