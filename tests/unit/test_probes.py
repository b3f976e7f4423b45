"""Probe handlers against servers on loopback and a fake guest agent."""

from __future__ import annotations

import base64
import socket
import ssl
from pathlib import Path

import pytest
from tests.ci import missing
from tests.unit.probe_support import (
    TIMEOUT,
    FakeAccess,
    Route,
    free_port,
    http_probe,
    probe_against,
    probe_of,
    run,
    start_http,
)
from tests.unit.tls_files import self_signed

from vmhealth import spec
from vmhealth.monitor.interfaces import (
    AgentBusy,
    AgentError,
    AgentUnavailable,
    NoVerdict,
    Outcome,
)
from vmhealth.monitor.probes import run_probe
from vmhealth.monitor.probes.http import USER_AGENT


def test_http_200_is_success():
    result, state = run(http_probe({"/": Route()}))
    assert result.outcome is Outcome.SUCCESS
    assert "HTTP 200" in result.message
    assert state.requests[0][0] == "/"


def test_http_and_tcp_work_on_uvloop():
    # The daemon may run on uvloop: it is in the `test` extra (setup.cfg), so CI has it
    # and fails here without it; a developer without it gets a skip.
    try:
        import uvloop
    except ImportError:
        missing("uvloop is not installed: pip install -e '.[test]'")
    loop = uvloop.new_event_loop()
    try:
        result, _ = loop.run_until_complete(http_probe({"/": Route()}))
        refused = loop.run_until_complete(
            run_probe(probe_of(spec.TcpSocket(port=free_port())), FakeAccess()))
    finally:
        loop.close()
    assert result.outcome is Outcome.SUCCESS, result.message
    assert refused.outcome is Outcome.FAILURE


def test_http_500_is_failure_naming_the_status_not_the_body():
    result, state = run(http_probe({"/healthz": Route(500, b"database down")},
                                   {"path": "/healthz"}))
    assert result.outcome is Outcome.FAILURE
    # Kubelet reports the status only: bodies can hold secrets (Kubernetes issue 99425).
    assert result.message == f"HTTP 500 from GET http://127.0.0.1:{state.port}/healthz"


def test_http_399_success_and_400_failure_bounds():
    ok, _ = run(http_probe({"/": Route(399)}))
    bad, _ = run(http_probe({"/": Route(400)}))
    assert ok.outcome is Outcome.SUCCESS
    assert bad.outcome is Outcome.FAILURE


def test_http_default_and_given_headers():
    headers = (("X-Token", "s3cret-value"), ("Host", "app.example"))
    result, state = run(http_probe({"/": Route(503)}, {"http_headers": headers}))
    sent = state.requests[0][1]
    assert sent["X-Token"] == "s3cret-value"
    assert sent["Host"] == "app.example"  # a Host header overrides the request host
    assert sent["User-Agent"] == USER_AGENT
    assert sent["Accept"] == "*/*"
    assert "s3cret-value" not in result.message  # header values are never reported


def test_http_user_agent_and_accept_not_added_when_given():
    headers = (("user-agent", "lb/1"), ("ACCEPT", "text/plain"))
    _, state = run(http_probe({"/": Route()}, {"http_headers": headers}))
    sent = state.requests[0][1]
    assert sent["User-Agent"] == "lb/1" and "user-agent" not in sent  # sent once, as Go
    assert sent["ACCEPT"] == "text/plain" and "Accept" not in sent


def test_http_redirect_to_same_host_is_followed():
    routes = {"/": Route(302, b"", (("Location", "/ready?x=1"),)), "/ready": Route(500)}
    result, state = run(http_probe(routes))
    assert [target for target, _ in state.requests] == ["/", "/ready?x=1"]
    assert result.outcome is Outcome.FAILURE  # the followed target's status decides


def test_http_redirect_to_other_host_is_success_with_warning():
    routes = {"/": Route(301, b"", (("Location", "http://elsewhere.example/"),))}
    result, state = run(http_probe(routes))
    assert result.outcome is Outcome.SUCCESS
    assert "warning" in result.message and "elsewhere.example" in result.message
    assert len(state.requests) == 1


def test_http_redirect_loop_stops_after_ten():
    result, state = run(http_probe({"/": Route(302, b"", (("Location", "/"),))}))
    assert result.outcome is Outcome.FAILURE
    assert "stopped after 10 redirects" in result.message
    assert len(state.requests) == 11


def test_http_timeout_is_failure():
    result, _ = run(http_probe({"/": Route(hang=True)}, timeout=0.2))
    assert result.outcome is Outcome.FAILURE
    assert "timed out" in result.message


def test_http_body_read_stops_at_10_kib():
    # The server announces 1 MiB, sends 20 KiB and keeps the connection open: only a
    # reader that stops at 10 KiB answers before the timeout.
    route = Route(200, b"x" * 20 * 1024, content_length=1024 * 1024)
    result, _ = run(http_probe({"/": route}, timeout=2))
    assert result.outcome is Outcome.SUCCESS, result.message


def test_http_refused_is_failure():
    port = free_port()
    result = run(run_probe(probe_of(spec.HttpGet(port=port)), FakeAccess()))
    assert result.outcome is Outcome.FAILURE
    assert "connection refused" in result.message


def test_http_no_address_is_a_failure():
    """Counted, as kubelet counts a pod it cannot reach: startupProbe and
    initialDelaySeconds are the user's tools for boot time (docs/probes.md)."""
    result = run(run_probe(probe_of(spec.HttpGet(port=80)), FakeAccess(addrs=[])))
    assert result.outcome is Outcome.FAILURE
    assert "no IP address" in result.message


needs_ipv6 = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host")


@needs_ipv6
def test_http_ipv6_address_bracketed():
    result, state = run(http_probe({"/": Route()}, host="::1"))
    assert result.outcome is Outcome.SUCCESS
    assert f"[::1]:{state.port}" in result.message
    assert state.requests[0][1]["Host"] == f"[::1]:{state.port}"


@needs_ipv6
def test_http_tries_addresses_in_order():
    # Nothing listens on ::1 at that port: the probe moves on to 127.0.0.1.
    result, _ = run(http_probe({"/": Route()}, addrs=["::1", "127.0.0.1"]))
    assert result.outcome is Outcome.SUCCESS
    assert "127.0.0.1" in result.message


def test_http_spec_host_wins_over_guest_addresses():
    result, _ = run(http_probe({"/": Route()}, {"host": "127.0.0.1"}, addrs=["192.0.2.1"]))
    assert result.outcome is Outcome.SUCCESS


def self_signed_context(tmp_path: Path) -> ssl.SSLContext:
    """A guest's TLS: self-signed, for an address the probe does not dial (kubelet
    checks neither the chain nor the name)."""
    cert, key = self_signed(tmp_path, "guest", address="10.9.9.9")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_https_self_signed_certificate_is_accepted(tmp_path):
    tls = self_signed_context(tmp_path)
    result, state = run(http_probe({"/": Route()}, {"scheme": spec.Scheme.HTTPS}, tls=tls))
    assert result.outcome is Outcome.SUCCESS, result.message
    assert result.message.startswith("HTTP 200 from GET https://")
    assert state.requests


def test_https_to_plain_http_server_is_failure():
    result, _ = run(http_probe({"/": Route()}, {"scheme": spec.Scheme.HTTPS}))
    assert result.outcome is Outcome.FAILURE


def test_http_garbage_answer_is_failure():
    async def scenario():
        async def garbage(reader, writer):
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            await writer.drain()
            writer.close()
        return await probe_against(garbage, lambda port: spec.HttpGet(port=port))
    result = run(scenario())
    assert result.outcome is Outcome.FAILURE
    assert "invalid HTTP response" in result.message


# ---------------------------------------------------------------------------
# tcpSocket
# ---------------------------------------------------------------------------


def test_tcp_open_port_is_success():
    result = run(probe_against(lambda r, w: w.close(), lambda port: spec.TcpSocket(port=port)))
    assert result.outcome is Outcome.SUCCESS
    assert "connected to 127.0.0.1" in result.message


def test_tcp_refused_is_failure():
    result = run(run_probe(probe_of(spec.TcpSocket(port=free_port())), FakeAccess()))
    assert result.outcome is Outcome.FAILURE
    assert "connection refused" in result.message


def test_tcp_no_address_is_a_failure():
    result = run(run_probe(probe_of(spec.TcpSocket(port=22)), FakeAccess(addrs=[])))
    assert result.outcome is Outcome.FAILURE


@pytest.mark.parametrize("error", [NoVerdict("libvirt cannot list the guest's addresses"),
                                   RuntimeError("a bug")])
def test_tcp_address_discovery_failure_is_error_and_ends(error):
    """The host could not be asked: uncounted, and the run still ends."""
    class Broken(FakeAccess):
        async def addresses(self):
            raise error
    result = run(run_probe(probe_of(spec.TcpSocket(port=22)), Broken(cached=False)))
    assert result.outcome is Outcome.ERROR


@pytest.mark.parametrize("handler_for_port", [
    lambda port: spec.TcpSocket(port=port), lambda port: spec.HttpGet(port=port)])
def test_addresses_are_looked_up_when_the_cache_is_stale(handler_for_port):
    async def scenario():
        state, server = await start_http({"/": Route()})
        fresh, stale = FakeAccess(), FakeAccess(cached=False)
        try:
            results = [await run_probe(probe_of(handler_for_port(state.port)), access)
                       for access in (fresh, stale)]
        finally:
            server.close()
        return results, fresh.lookups, stale.lookups

    results, fresh_lookups, stale_lookups = run(scenario())
    assert [r.outcome for r in results] == [Outcome.SUCCESS, Outcome.SUCCESS]
    assert (fresh_lookups, stale_lookups) == (0, 1)


# ---------------------------------------------------------------------------
# guestAgentPing
# ---------------------------------------------------------------------------

def test_ping_answered_is_success():
    access = FakeAccess(agent=lambda command: {})
    result = run(run_probe(probe_of(spec.GuestAgentPing()), access))
    assert result.outcome is Outcome.SUCCESS
    assert access.commands == [{"execute": "guest-ping"}]


def test_ping_agent_unavailable_is_failure():
    def gone(command):
        raise AgentUnavailable("guest agent is not connected")
    result = run(run_probe(probe_of(spec.GuestAgentPing()), FakeAccess(agent=gone)))
    assert result.outcome is Outcome.FAILURE
    assert "not connected" in result.message


# ---------------------------------------------------------------------------
# exec through guest-exec / guest-exec-status
# ---------------------------------------------------------------------------

class FakeGuestExec:
    """guest-exec that exits after `polls` status calls with `exitcode` and `output`."""

    def __init__(self, exitcode=0, output=b"", polls=1, refuse: AgentError | None = None):
        self.exitcode, self.output, self.polls, self.refuse = exitcode, output, polls, refuse

    def __call__(self, command):
        if command["execute"] == "guest-exec":
            if self.refuse:
                raise self.refuse
            return {"pid": 4242}
        assert command == {"execute": "guest-exec-status", "arguments": {"pid": 4242}}
        self.polls -= 1
        if self.polls > 0:
            return {"exited": False}
        return {"exited": True, "exitcode": self.exitcode,
                "out-data": base64.b64encode(self.output).decode()}


def exec_probe(agent, command=("cat", "/tmp/healthy.txt"), timeout=TIMEOUT):
    access = FakeAccess(agent=agent)
    result = run(run_probe(probe_of(spec.Exec(command=command), timeout), access))
    return result, access


def test_exec_exit_0_is_success_and_command_is_structured():
    result, access = exec_probe(FakeGuestExec(0, b"healthy\n", polls=2),
                                command=("sh", "-c", 'echo "a\\"b"'))
    assert result.outcome is Outcome.SUCCESS
    assert "healthy" in result.message
    assert access.commands[0] == {"execute": "guest-exec", "arguments": {
        "path": "sh", "arg": ["-c", 'echo "a\\"b"'], "capture-output": True}}


def test_exec_exit_1_is_failure():
    result, _ = exec_probe(FakeGuestExec(1, b"no such file"))
    assert result.outcome is Outcome.FAILURE
    assert "exited 1" in result.message and "no such file" in result.message


def test_exec_output_in_the_message_is_an_excerpt():
    result, _ = exec_probe(FakeGuestExec(0, b"y" * 50_000 + b"\x1b]0;x\x07"))
    assert "y" * 500 in result.message and len(result.message) < 600
    assert "\x1b" not in result.message


def test_exec_timeout_is_failure_and_says_the_process_keeps_running():
    result, access = exec_probe(FakeGuestExec(polls=10**9), timeout=0.3)
    assert result.outcome is Outcome.FAILURE
    assert "did not exit within" in result.message and "keeps running" in result.message
    assert len(access.commands) > 2  # it polled in between


@pytest.mark.parametrize("error", [
    AgentError("refused", blocked=True),
    AgentError("The command guest-exec has been disabled for this agent"),
    AgentError("x", error_class="CommandDisabled"),
])
def test_exec_blocked_names_the_fix(error):
    result, _ = exec_probe(FakeGuestExec(refuse=error))
    assert result.outcome is Outcome.FAILURE
    assert "RPC filter" in result.message and "vmhealth guest setup" in result.message


def test_exec_other_agent_error_is_failure_without_the_fix():
    result, _ = exec_probe(FakeGuestExec(refuse=AgentError("Failed to execute child process")))
    assert result.outcome is Outcome.FAILURE
    assert "Failed to execute" in result.message and "RPC filter" not in result.message


def test_exec_agent_unavailable_is_a_failure():
    """KubeVirt: "if the guest agent is not available, this probe will fail"."""
    def gone(command):
        raise AgentUnavailable("guest agent is not connected")
    result, _ = exec_probe(gone)
    assert result.outcome is Outcome.FAILURE


def test_exec_that_could_not_be_polled_at_the_deadline_is_an_error_not_a_failure():
    """Another probe's call to the same agent held the slot at every poll: whether the
    command exited is unknown, so nothing is counted against the guest."""
    def busy_polls(command):
        if command["execute"] == "guest-exec":
            return {"pid": 4242}
        raise AgentBusy("not run: guest-ping sent to the guest agent 0.1 s ago has not "
                        "returned yet")
    result, _ = exec_probe(busy_polls, timeout=0.3)
    assert result.outcome is Outcome.ERROR
    assert "could not read guest-exec-status" in result.message


def test_exec_that_finds_the_agent_busy_at_the_start_is_skipped():
    def busy(command):
        raise AgentBusy("not run: busy")
    result, _ = exec_probe(busy)
    assert result.outcome is Outcome.SKIPPED
